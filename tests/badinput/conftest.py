"""The bad-input corpus: one in-process agent for a module, spoken to through its real HTTP
endpoint and its real MQTT binding, and a tally of what was tried.

The agent's runner is not started, so an accepted request stays STARTING and nothing compiles;
the target check is pinned to the captured x86_64 server (tests/data/devices), so the same
requests are valid on any machine. The tally is printed at the end of the run (`bad-input
corpus: ...`): those are the figures README.md quotes.
"""
from __future__ import annotations

import collections
import http.client
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.api.service import CompilationService
from agent.config import AgentConfig
from agent.service.agent import Agent
from agent.transports.binding import AccessPolicy, MqttApiBinding, Outgoing
from agent.transports.http import HttpTransport
from agent.transports.outbox import Outbox
from tests.api.helpers import X86_TARGETS, make_body

JSON_TYPE = "application/x-amz-json-1.1"
THING = "edge-1"
MQTT_MAX_PAYLOAD = 128 * 1024  # the default, AWS IoT Core's limit

TALLY: collections.Counter[str] = collections.Counter()
_TALLY_LOCK = threading.Lock()


def tally(kind: str, count: int = 1) -> None:
    """Count `count` bad inputs of `kind` as tried (each was refused, or the test failed)."""
    with _TALLY_LOCK:
        TALLY[kind] += count


def pytest_terminal_summary(terminalreporter) -> None:
    if TALLY:
        terminalreporter.write_sep("-", "bad-input corpus: inputs tried, every one answered cleanly")
        for kind, count in sorted(TALLY.items()):
            terminalreporter.write_line(f"{count:8d}  {kind}")


def valid_body(name: str = "fuzz-base") -> dict[str, Any]:
    """A valid request with every optional structure filled in, so each has members to break."""
    body = make_body(name, VpcConfig={"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1"]},
                     Tags=[{"Key": "k", "Value": "v"}])
    body["OutputConfig"]["CompilerOptions"] = '{"mcpu": "skylake"}'
    body["StoppingCondition"]["MaxWaitTimeInSeconds"] = 1800
    return body


class Served:
    """An Agent with an HttpTransport on 127.0.0.1:0 and an MqttApiBinding answering in-process."""

    def __init__(self, state_dir: Path, access: AccessPolicy | None = None, **settings: Any):
        self.agent = Agent(AgentConfig(state_dir=state_dir, queue_limit=10**6, **settings))
        self.http_api = self._api("http")
        self.http = HttpTransport(self.http_api, "127.0.0.1:0")
        self.published: list[Outgoing] = []
        self.outbox = Outbox(state_dir / "mqtt-outbox.sqlite3")
        self.binding = MqttApiBinding(self._api("mqtt"), self.agent.events, THING, self.published.append,
                                      outbox=self.outbox, max_payload_bytes=MQTT_MAX_PAYLOAD, access=access)

    def _api(self, channel: str) -> CompilationService:
        return CompilationService(self.agent.store, self.agent.runner, self.agent.config, channel=channel,
                                  target_check=X86_TARGETS)

    def start(self) -> "Served":
        self.http.start()
        return self

    def stop(self) -> None:
        self.http.stop(timeout=5)
        self.binding.close()
        self.outbox.close()
        self.agent.store.close()

    # --- HTTP ----------------------------------------------------------------------------------
    def post(self, body: bytes, operation: str = "CreateCompilationJob",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
        """One raw request: (status, headers, the JSON answer)."""
        host, port = self.http.url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request("POST", "/", body=body, headers={"Content-Type": JSON_TYPE,
                                                          "X-Amz-Target": f"SageMaker.{operation}", **(headers or {})})
            response = conn.getresponse()
            return response.status, dict(response.headers.items()), json.loads(response.read())
        finally:
            conn.close()

    # --- MQTT ----------------------------------------------------------------------------------
    def publish(self, payload: bytes, operation: str = "CreateCompilationJob") -> tuple[str, dict[str, Any]]:
        """One request message on neo/{thing}/{operation}: (the answer's topic, its JSON)."""
        before = len(self.published)
        self.binding.handle_request(f"neo/{THING}/{operation}", payload)
        answers = self.published[before:]
        assert len(answers) == 1, f"expected one answer, got {answers}"
        return answers[0].topic, json.loads(answers[0].payload)

    # --- the store -----------------------------------------------------------------------------
    def job_count(self) -> int:
        """How many jobs the agent holds, asked through the API (which must still answer)."""
        count, token = 0, None
        while True:
            body = {"MaxResults": 100, **({"NextToken": token} if token else {})}
            answer = self.http_api.call("ListCompilationJobs", body)
            count += len(answer["CompilationJobSummaries"])
            token = answer.get("NextToken")
            if not token:
                return count


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    served = Served(tmp_path_factory.mktemp("badinput") / "state").start()
    yield served
    served.stop()


def http_error(answer: tuple[int, dict[str, str], dict[str, Any]]) -> tuple[int, str, str]:
    """(status, code, message) of an HTTP error answer, after checking it is SageMaker's form."""
    status, headers, body = answer
    assert status != 500, body
    assert set(body) == {"__type", "message"}, body
    assert headers["x-amzn-ErrorType"] == body["__type"] and headers["Content-Type"] == JSON_TYPE
    assert "Traceback" not in body["message"]
    return status, body["__type"], body["message"]


def mqtt_error(answer: tuple[str, dict[str, Any]], operation: str = "CreateCompilationJob") -> tuple[str, str]:
    """(code, message) of an MQTT rejected answer."""
    topic, body = answer
    assert topic == f"neo/{THING}/{operation}/rejected", (topic, body)
    error = body["error"]
    assert error["code"] != "InternalFailure", error
    assert "Traceback" not in error["message"]
    return error["code"], error["message"]
