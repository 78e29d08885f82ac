"""AWS IoT Jobs: job documents in, execution statuses out, over the IoT Core connection.

AWS IoT itself cannot run here, so the Jobs service is a stand-in (tests/iotjobs_service.py)
speaking its MQTT API — start-next, update, describe with accepted/rejected, notify and
notify-next — over a real Mosquitto broker; the agent reaches that broker by mTLS with the
thing's certificate, as it would reach AWS IoT Core (tests/transports/iot_fixtures.py).
Compiles are real (the sample model, file:// URIs) where the result matters, and scripted
(tests/runner/scripted_pipeline.py) where a test needs a compile that lasts.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

from agent.config import CHANNELS, AgentConfig, BenchConfig
from agent.errors import ValidationException
from agent.samples import make_sample_archive
from agent.service.agent import Agent
from agent.transports import iotjobs
from agent.transports.iotcore import IotCoreConnection
from agent.transports.iotjobs import (
    IotJobsTransport, compilation_job_name, detail, request_from_document, step_timeout_minutes,
)
from agent.transports.iotjobs_state import ExecutionLedger
from tests.waiting import wait_until
from tests.iotjobs_service import JobsService
from tests.mosquitto import mosquitto_binary
from tests.runner.conftest import make_config
from tests.service.daemon_process import DaemonProcess, kill_alarm  # noqa: F401 (a fixture)
from tests.transports.iot_fixtures import THING, iot_broker, iot_settings, pki  # noqa: F401 (fixtures)

FAST_BENCH = BenchConfig(min_iterations=5, min_seconds=0.1, warmup_runs=1, warmup_seconds=0.0, max_seconds=10)
NEO_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
COMPILE_WAIT_S = 300.0
WAIT_S = 60.0
SPACED = "tests.runner.scripted_pipeline"  # the scripted pipeline, steps separated by spaces

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")


def document(model_uri: str, output_uri: str, **extra) -> dict:
    request = {
        "RoleArn": "arn:aws:iam::123456789012:role/neo",
        "InputConfig": {"S3Uri": model_uri, "Framework": "ONNX"},
        "OutputConfig": {"S3OutputLocation": output_uri, "TargetDevice": "ml_c5"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }
    request.update(extra)
    return {"operation": "CreateCompilationJob", "request": request}


def scripted(script: str) -> dict:
    """A document for tests/runner/scripted_pipeline.py: space-separated scripted steps."""
    return document("file:///nowhere/model.tar.gz", "file:///nowhere/out",
                    Tags=[{"Key": "test-script", "Value": script}])


@pytest.fixture
def jobs(iot_broker):
    with JobsService(iot_broker.host, iot_broker.port, [THING]) as service:
        yield service


@pytest.fixture
def serve(tmp_path, iot_settings):
    """start(scripted=True) -> (agent, transport): an agent serving IoT Jobs over mTLS."""
    running = []

    def start(scripted: bool = True):
        if scripted:
            config = make_config(tmp_path, iotcore=iot_settings, pipeline_module=SPACED, file_uri_channels=CHANNELS)
        else:
            config = AgentConfig(state_dir=tmp_path / "state", bench=FAST_BENCH, iotcore=iot_settings,
                                 file_uri_channels=CHANNELS)  # the documents name file:// locations
        agent = Agent(config)
        transport = IotJobsTransport(agent, IotCoreConnection(iot_settings))
        agent.start()
        transport.start()
        running.append((agent, transport))
        return agent, transport

    yield start
    for agent, transport in running:
        transport.stop(5)
        agent.shutdown()


def iot_env(settings) -> dict[str, str]:
    """The settings as `neo-agent run` reads them: NEO_AGENT_IOTCORE_* variables (and the
    documents' file:// locations allowed)."""
    return {**{f"NEO_AGENT_IOTCORE_{key.upper()}": str(value) for key, value in settings.__dict__.items()},
            "NEO_AGENT_FILE_URI_CHANNELS": ",".join(CHANNELS)}


def status_of(jobs: JobsService, job_id: str) -> str:
    return jobs.execution(THING, job_id).status


def in_progress_details(execution) -> list[dict]:
    """The device's IN_PROGRESS updates (start-next's own move to IN_PROGRESS carries none)."""
    return [d for status, d in execution.history if status == "IN_PROGRESS" and d]


# --- the whole flow on a real compile ---------------------------------------------------------
def test_a_job_document_compiles_and_the_execution_succeeds_with_the_results(tmp_path, jobs, serve):
    archive = make_sample_archive(tmp_path)
    out_dir = tmp_path / "out"
    agent, _ = serve(scripted=False)
    jobs.add_job(THING, "sample-1", document(archive.as_uri(), out_dir.as_uri()))
    jobs.wait_for(lambda: status_of(jobs, "sample-1") not in ("QUEUED", "IN_PROGRESS"), COMPILE_WAIT_S)
    execution = jobs.execution(THING, "sample-1")
    name = compilation_job_name("sample-1")
    final = execution.status_details
    assert execution.status == "SUCCEEDED", final
    assert final["CompilationJobArn"] == f"arn:aws:sagemaker:us-east-1:000000000000:compilation-job/{name}"
    assert final["S3ModelArtifacts"].startswith(out_dir.as_uri()) and final["S3ModelArtifacts"].endswith(".tar.gz")
    assert Path(final["S3ModelArtifacts"].removeprefix("file://")).is_file()
    for key in ("tvm_p50_ms", "reference_p50_ms", "speedup_vs_reference"):
        assert float(final[key]) > 0
    assert final["reference_engine"] == "onnxruntime" and len(final) <= 10  # IoT Jobs takes 10 pairs at most
    # Progress on the way: IN_PROGRESS with a stage and a percent, as strings, stages in order.
    progress = in_progress_details(execution)
    stages = [d["stage"] for d in progress]
    assert {"fetch", "compile", "benchmark"} & set(stages)
    assert all(isinstance(v, str) and 0 < len(v) <= 1024 for d in progress for v in d.values())
    assert [float(d["percent"]) for d in progress] == sorted(float(d["percent"]) for d in progress)
    assert execution.step_timeout == math.ceil(600 / 60) + agent.config.iotcore.jobs_step_margin_min
    described = agent.api.call("DescribeCompilationJob", {"CompilationJobName": name})
    assert described["CompilationJobStatus"] == "COMPLETED"
    assert agent.store.get(name).channel == "iotjobs"
    # Every update named the version it expected, once it was known.
    updates = [body for topic, body in jobs.requests if topic.endswith("/update")]
    assert updates and all("expectedVersion" in body and body["clientToken"] for body in updates)


def test_a_missing_model_fails_the_execution_with_the_failure_reason(tmp_path, jobs, serve):
    serve(scripted=False)
    missing = (tmp_path / "absent" / "model.tar.gz").as_uri()
    jobs.add_job(THING, "missing-1", document(missing, (tmp_path / "out").as_uri()))
    jobs.wait_for(lambda: status_of(jobs, "missing-1") == "FAILED", COMPILE_WAIT_S)
    reason = jobs.execution(THING, "missing-1").status_details["FailureReason"]
    assert reason.startswith("ClientError: InputConfiguration:")
    assert "absent/model.tar.gz" in reason


# --- documents the agent refuses -------------------------------------------------------------------
@pytest.mark.parametrize("doc, words", [
    ({"operation": "StopCompilationJob", "request": {}}, "runs only 'CreateCompilationJob'"),
    ({"operation": "CreateCompilationJob"}, "'request' must be"),
    ({"operation": "CreateCompilationJob", "request": {}, "extra": 1}, "unknown members ['extra']"),
    ("not json at all", "not JSON"),
    (["a", "list"], "must be a JSON object"),
    ({"operation": "CreateCompilationJob", "request": {"RoleArn": "arn:aws:iam::123456789012:role/neo"}},
     "validation error"),
    (document("file:///m.tar.gz", "file:///out", CompilationJobName="my-own-name"), "Leave CompilationJobName out"),
    (document("file:///m.tar.gz", "file:///out", OutputConfig={"S3OutputLocation": "file:///o",
                                                               "TargetDevice": "jetson_nano"}), "jetson_nano"),
])
def test_a_bad_document_fails_the_execution_with_the_validation_text(jobs, serve, doc, words):
    agent, _ = serve()
    jobs.add_job(THING, "bad-doc", doc)
    jobs.wait_for(lambda: status_of(jobs, "bad-doc") == "FAILED")
    reason = jobs.execution(THING, "bad-doc").status_details["FailureReason"]
    assert reason.startswith("ValidationException: ") and words in reason
    assert agent.api.call("ListCompilationJobs", {})["CompilationJobSummaries"] == []


# --- cancel, duplicates, restarts -------------------------------------------------------------------
def test_canceling_the_execution_stops_the_compile_and_reports_nothing_more(jobs, serve):
    agent, _ = serve()
    jobs.add_job(THING, "long-1", scripted("stage=compile sleep=60"))
    jobs.wait_for(lambda: any(d.get("stage") == "compile" for d in in_progress_details(jobs.execution(THING, "long-1"))))
    jobs.cancel(THING, "long-1", force=True)
    name = compilation_job_name("long-1")
    _wait(lambda: agent.store.get(name).status.value == "STOPPED", WAIT_S)
    # The agent goes on with the next execution.
    jobs.add_job(THING, "next-1", scripted("stage=compile"))
    jobs.wait_for(lambda: status_of(jobs, "next-1") == "SUCCEEDED")
    execution = jobs.execution(THING, "long-1")
    assert execution.status == "CANCELED"
    assert [s for s, _ in execution.history] == ["IN_PROGRESS"] * (len(execution.history) - 1) + ["CANCELED"]


def test_a_cancel_whose_notice_was_lost_is_found_by_the_next_update(jobs, serve):
    """No notify: the next IN_PROGRESS update is rejected (TerminalStateReached) and the compile stops."""
    agent, _ = serve()
    jobs.add_job(THING, "quiet-1", scripted("stage=compile sleep=2 stage=verify sleep=60"))
    jobs.wait_for(lambda: any(d.get("stage") == "compile" for d in in_progress_details(jobs.execution(THING, "quiet-1"))))
    jobs.cancel(THING, "quiet-1", force=True, notify=False)
    _wait(lambda: agent.store.get(compilation_job_name("quiet-1")).status.value == "STOPPED", WAIT_S)
    rejected = [body for topic, body in jobs.requests if topic.endswith("/quiet-1/update") and body["status"] == "IN_PROGRESS"]
    assert rejected[-1]["statusDetails"]["stage"] == "verify"


def test_a_cancel_whose_notice_was_lost_is_found_by_the_periodic_check(jobs, serve, monkeypatch):
    monkeypatch.setattr(iotjobs, "CHECK_INTERVAL_S", 1.0)
    agent, _ = serve()
    jobs.add_job(THING, "quiet-2", scripted("stage=compile sleep=60"))
    jobs.wait_for(lambda: any(d.get("stage") == "compile" for d in in_progress_details(jobs.execution(THING, "quiet-2"))))
    jobs.cancel(THING, "quiet-2", force=True, notify=False)
    _wait(lambda: agent.store.get(compilation_job_name("quiet-2")).status.value == "STOPPED", WAIT_S)
    assert any(topic.endswith("/quiet-2/get") for topic, _ in jobs.requests)


def test_an_execution_removed_while_compiling_stops_the_compile(jobs, serve):
    agent, _ = serve()
    jobs.add_job(THING, "gone-1", scripted("stage=compile sleep=60"))
    jobs.wait_for(lambda: any(d.get("stage") == "compile" for d in in_progress_details(jobs.execution(THING, "gone-1"))))
    jobs.remove(THING, "gone-1")
    _wait(lambda: agent.store.get(compilation_job_name("gone-1")).status.value == "STOPPED", WAIT_S)


def test_duplicate_notifications_start_one_compilation_job(jobs, serve):
    agent, _ = serve()
    jobs.add_job(THING, "dup-1", scripted("stage=compile sleep=1"))
    for _ in range(5):
        jobs.notify_next(THING)
    jobs.wait_for(lambda: status_of(jobs, "dup-1") == "SUCCEEDED")
    for _ in range(3):
        jobs.notify_next(THING)
    time.sleep(1)
    summaries = agent.api.call("ListCompilationJobs", {})["CompilationJobSummaries"]
    assert [s["CompilationJobName"] for s in summaries] == [compilation_job_name("dup-1")]
    assert [s for s, _ in jobs.execution(THING, "dup-1").history].count("SUCCEEDED") == 1


def test_an_agent_restart_mid_job_ends_the_execution_failed_with_agent_restart(tmp_path, jobs, iot_settings,
                                                                                kill_alarm):
    """`neo-agent run` (scripted pipeline) SIGKILLed mid-compile, then started again on the same state."""
    state, env = tmp_path / "state", iot_env(iot_settings)
    first = DaemonProcess(state, scripted=True, env=env).start()
    try:
        assert "iotcore mqtts://127.0.0.1:" in first.log() and "iotjobs" in first.log()
        jobs.add_job(THING, "restart-1", scripted("stage=compile sleep=60"))
        jobs.wait_for(lambda: any(d.get("stage") == "compile"
                                  for d in in_progress_details(jobs.execution(THING, "restart-1"))))
    finally:
        first.kill()
    again = DaemonProcess(state, scripted=True, env=env).start()  # recovery, then the transports
    try:
        jobs.wait_for(lambda: status_of(jobs, "restart-1") == "FAILED")
        details = jobs.execution(THING, "restart-1").status_details
        assert details["FailureReason"].startswith("ServerError: AgentRestart: ")
        assert details["CompilationJobName"] == compilation_job_name("restart-1")
        assert len(again.client().list_compilation_jobs()["CompilationJobSummaries"]) == 1
    finally:
        assert again.stop() == 0, again.log()


def test_a_final_status_the_service_did_not_take_is_sent_after_a_restart(jobs, serve, iot_broker, monkeypatch):
    monkeypatch.setattr(iotjobs, "REQUEST_TIMEOUT_S", 1.0)
    agent, transport = serve()
    jobs.add_job(THING, "owed-1", scripted("stage=compile sleep=6"))  # long enough to see "compile" under load
    jobs.wait_for(lambda: any(d.get("stage") == "compile" for d in in_progress_details(jobs.execution(THING, "owed-1"))))
    jobs.stop()  # the service is unreachable while the job ends
    name = compilation_job_name("owed-1")
    _wait(lambda: agent.store.get(name).status.value == "COMPLETED", WAIT_S)
    _wait(lambda: transport.ledger.unfinished() and transport.ledger.unfinished()[0].state == "owed", WAIT_S)
    transport.stop(2)
    agent.shutdown()
    with JobsService(iot_broker.host, iot_broker.port, [THING]) as service:
        service.executions = jobs.executions  # the same service, back
        serve()
        service.wait_for(lambda: status_of(service, "owed-1") == "SUCCEEDED")
        assert service.execution(THING, "owed-1").status_details["CompilationJobName"] == name


def test_an_execution_settled_here_but_still_pending_there_gets_its_final_status_again(tmp_path, jobs, serve):
    """The agent had its SUCCEEDED accepted... as far as it knew; IoT Jobs never got it. Said again."""
    name = compilation_job_name("lost-1")
    ledger = ExecutionLedger(tmp_path / "state" / "iotjobs.sqlite3")
    record = ledger.claim("lost-1", 1, name)
    ledger.owe(record, "SUCCEEDED", {"CompilationJobName": name, "stage": "upload", "percent": "100"})
    ledger.done(record, "reported SUCCEEDED")
    ledger.close()
    jobs.add_job(THING, "lost-1", scripted("stage=compile"))
    agent, _ = serve()
    jobs.wait_for(lambda: status_of(jobs, "lost-1") == "SUCCEEDED")
    assert jobs.execution(THING, "lost-1").status_details["CompilationJobName"] == name
    assert agent.api.call("ListCompilationJobs", {})["CompilationJobSummaries"] == []  # nothing compiled twice


# --- the pieces ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("job_id", ["a", "job_1", "A-b-C", "x" * 64, "__", "0-0_0", "a" * 40 + "_" + "b" * 23])
def test_compilation_job_names_fit_neo_and_are_deterministic(job_id):
    name = compilation_job_name(job_id)
    assert NEO_NAME.match(name) and len(name) <= 63
    assert name == compilation_job_name(job_id)


def test_names_keep_apart_ids_that_sanitizing_would_merge():
    names = {compilation_job_name(i).lower() for i in ("a_b", "a-b", "A-b", "a--b")}
    assert len(names) == 4
    assert compilation_job_name("a", 2) != compilation_job_name("a", 1)


def test_document_becomes_the_request_with_the_agent_given_name():
    doc = document("file:///m.tar.gz", "file:///o")
    request = request_from_document(json.dumps(doc), "iotjob-x-12345678")
    assert request["CompilationJobName"] == "iotjob-x-12345678" and request["RoleArn"] == doc["request"]["RoleArn"]
    same = document("file:///m.tar.gz", "file:///o", CompilationJobName="IOTJOB-X-12345678")
    assert request_from_document(same, "iotjob-x-12345678")["CompilationJobName"] == "iotjob-x-12345678"
    with pytest.raises(ValidationException):
        request_from_document({"operation": "CreateCompilationJob", "request": "x"}, "n")


@pytest.mark.parametrize("seconds, margin, minutes", [(600, 10, 20), (61, 10, 12), (1, 0, 1), (86400, 10, 1450),
                                                      (28 * 86400, 10, 10080)])
def test_step_timeout_is_max_runtime_rounded_up_plus_margin_within_iot_bounds(seconds, margin, minutes):
    assert step_timeout_minutes(seconds, margin) == minutes


def test_status_detail_values_are_short_single_line_strings():
    assert detail("line one\nline\ttwo") == "line one line two"
    assert len(detail("x" * 5000)) == 1024 and detail("x" * 5000).endswith("...")
    assert detail("") == "-" and detail(1.5) == "1.5"


def _wait(predicate, timeout: float = WAIT_S) -> None:
    wait_until(predicate, timeout)
