"""A burst of CreateCompilationJob over HTTP and over MQTT at a real agent process and broker:
the queue bound refuses what is past it, and nothing accepted is lost. benchmarks/load.py runs
the same burst with 500 requests and reports the figures (benchmarks/results/load.md); here
it is smaller, and only correctness is asserted, never speed."""
from __future__ import annotations

import pytest

from benchmarks.load import load_test
from tests.mosquitto import mosquitto  # noqa: F401  (fixture)

REQUESTS, QUEUE_LIMIT = 150, 40


@pytest.fixture(scope="module")
def bursts(tmp_path_factory):
    from tests.mosquitto import Mosquitto

    tmp = tmp_path_factory.mktemp("load")
    broker = Mosquitto(tmp / "broker").start()
    try:
        yield {r["transport"]: r for r in load_test(tmp, broker, REQUESTS, QUEUE_LIMIT, job_timeout=300)}
    finally:
        broker.stop()


@pytest.mark.parametrize("transport", ["http", "mqtt"])
def test_a_burst_is_accepted_to_the_queue_bound_and_refused_past_it(bursts, transport):
    result = bursts[transport]
    assert result["accepted"] >= QUEUE_LIMIT
    assert result["accepted"] + sum(result["refused"].values()) == REQUESTS
    assert set(result["refused"]) == {"ResourceLimitExceeded"}, result["refused"]


@pytest.mark.parametrize("transport", ["http", "mqtt"])
def test_every_accepted_job_ends_and_is_listed_and_no_refused_one_is(bursts, transport):
    result = bursts[transport]
    assert result["final_status"] == {"COMPLETED": result["accepted"]}
    assert result["not_ended"] == [] and result["accepted_not_listed"] == [] and result["refused_but_listed"] == []
