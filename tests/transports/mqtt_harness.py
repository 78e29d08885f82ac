"""Test helpers for the MQTT transport: an agent serving MQTT in this process, and a raw paho
client that sees exactly what goes over the wire (it does not use agent/transports/mqtt.py,
so the tests check the transport's wire format against a plain MQTT client)."""
from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import AgentConfig, BenchConfig, MqttConfig
from agent.service.agent import Agent
from agent.transports.mqtt import MqttTransport

FAST_BENCH = BenchConfig(min_iterations=5, min_seconds=0.1, warmup_runs=1, warmup_seconds=0.0, max_seconds=10)
FAST_BENCH_ENV = {"NEO_AGENT_BENCH_MIN_ITERATIONS": "5", "NEO_AGENT_BENCH_MIN_SECONDS": "0.1",
                  "NEO_AGENT_BENCH_WARMUP_RUNS": "1", "NEO_AGENT_BENCH_WARMUP_SECONDS": "0"}
SCRIPTED = "tests.runner.scripted_pipeline"  # the runner tests' scripted pipeline; steps separated by spaces
WAIT_S = 15.0  # an answer or an event on loopback
JOB_WAIT_S = 300.0  # a real compile of the sample model (about 20 s on two cores)
ROLE = "arn:aws:iam::123456789012:role/neo"


def mqtt_settings(broker, thing: str = "edge-1", protocol: str = "5", **changes: Any) -> MqttConfig:
    return MqttConfig(enabled=True, host=broker.host, port=broker.port, thing_name=thing, protocol=protocol, **changes)


def scripted_request(name: str, script: str = "stage=compile", **extra: Any) -> dict[str, Any]:
    """A request the scripted pipeline (tests/runner/scripted_pipeline.py) runs: "stage=compile sleep=1"."""
    body = {
        "CompilationJobName": name,
        "RoleArn": ROLE,
        "InputConfig": {"S3Uri": "file:///nowhere/model.tar.gz", "Framework": "ONNX"},
        "OutputConfig": {"S3OutputLocation": "file:///nowhere/out", "TargetDevice": "ml_c5"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
        "Tags": [{"Key": "test-script", "Value": script}],
    }
    body.update(extra)
    return body


def real_request(name: str, archive: Path, out_dir: Path) -> dict[str, Any]:
    """A real compile of the sample model, file:// in and out."""
    return {
        "CompilationJobName": name,
        "RoleArn": ROLE,
        "InputConfig": {"S3Uri": archive.as_uri(), "Framework": "ONNX"},
        "OutputConfig": {"S3OutputLocation": out_dir.as_uri(), "TargetDevice": "ml_c5"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }


class ServedAgent:
    """Agent + MqttTransport in this process, started in the daemon's order (transport made
    before the agent starts, so recovery events reach the outbox)."""

    def __init__(self, state_dir: Path, settings: MqttConfig, *, scripted: bool = True, connect_timeout: float = WAIT_S):
        self.config = AgentConfig(state_dir=state_dir, bench=FAST_BENCH, stop_grace_s=1.0, deadline_grace_s=1.0,
                                  pipeline_module=SCRIPTED if scripted else "agent.pipeline", mqtt=settings,
                                  file_uri_channels=("mqtt",))  # the requests name file:// locations
        self.agent = Agent(self.config)
        self.transport = MqttTransport.from_agent(self.agent)
        self.connect_timeout = connect_timeout

    def start(self) -> "ServedAgent":
        self.transport.start(timeout=self.connect_timeout)
        self.agent.start()
        return self

    def stop(self, flush_timeout: float = 5.0) -> None:
        self.agent.shutdown(timeout=10)
        self.transport.stop(flush_timeout)

    def wait_status(self, name: str, statuses=("COMPLETED", "FAILED", "STOPPED"), timeout: float = JOB_WAIT_S) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            describe = self.agent.api.call("DescribeCompilationJob", {"CompilationJobName": name})
            if describe["CompilationJobStatus"] in statuses:
                return describe
            time.sleep(0.1)
        raise AssertionError(f"{name} did not reach {statuses} in {timeout} s")

    def __enter__(self) -> "ServedAgent":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RawClient:
    """A plain paho client that records every message it receives."""

    def __init__(self, broker, protocol: str = "5", client_id: str | None = None, persistent: bool = False):
        self.v5 = protocol == "5"
        self.client_id = client_id or f"test-{uuid.uuid4().hex[:10]}"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  clean_session=None if self.v5 else not persistent,
                                  protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311)
        self.messages: list[paho.MQTTMessage] = []
        self.cond = threading.Condition()
        self.filters: list[str] = []
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._acked(a[2])
        self.client.reconnect_delay_set(1, 2)
        self._subacks: set[int] = set()
        self._connected = threading.Event()
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600 if persistent else 0
        self.client.connect(broker.host, broker.port, clean_start=not persistent if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                            properties=props)
        self.client.loop_start()
        assert self._connected.wait(WAIT_S), "test client could not connect"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        for f in self.filters:
            client.subscribe(f, qos=1)
        self._connected.set()

    def _on_message(self, client, userdata, message) -> None:
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def _acked(self, mid: int) -> None:
        with self.cond:
            self._subacks.add(mid)
            self.cond.notify_all()

    def subscribe(self, *filters: str) -> None:
        for f in filters:
            self.filters.append(f)
            _, mid = self.client.subscribe(f, qos=1)
            with self.cond:
                assert self.cond.wait_for(lambda: mid in self._subacks, WAIT_S), f"no SUBACK for {f}"

    def publish(self, topic: str, payload: Any, *, response_topic: str | None = None,
                correlation_data: bytes | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        props = None
        if response_topic or correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
        self.client.publish(topic, data, qos=1, properties=props).wait_for_publish(WAIT_S)

    def wait_for(self, predicate: Callable[[paho.MQTTMessage], bool], timeout: float = WAIT_S) -> paho.MQTTMessage:
        """The first recorded message that satisfies `predicate`, waiting up to `timeout`."""
        found: list = []

        def check() -> bool:
            found[:] = [m for m in self.messages if predicate(m)]
            return bool(found)

        with self.cond:
            if not self.cond.wait_for(check, timeout):
                raise AssertionError(f"no such message within {timeout} s; got {[m.topic for m in self.messages]}")
        return found[0]

    def on_topic(self, topic: str) -> list[paho.MQTTMessage]:
        with self.cond:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def body(message: paho.MQTTMessage) -> dict[str, Any]:
    return json.loads(message.payload)
