"""The MQTT transport against a real Mosquitto broker: requests and answers (MQTT 5 and 3.1.1),
errors, limits, authorization, job events of a real compile, and delivery through broker and
agent restarts."""
from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest

from agent.client.remote import RemoteAgent
from agent.config import MqttConfig
from agent.errors import ConfigError
from agent.samples import make_sample_archive
from agent.transports import topics
from agent.transports.mqtt import MqttError, PahoSession
from tests import waiting
from tests.mosquitto import Mosquitto, mosquitto  # noqa: F401  (fixture)
from tests.transports import iot_fixtures
from tests.transports.iot_fixtures import iot_broker, pki  # noqa: F401  (fixtures: an mTLS listener)
from tests.transports.mqtt_harness import (
    JOB_WAIT_S, WAIT_S, RawClient, ServedAgent, body, mqtt_settings, real_request, scripted_request,
)

THING = "edge-1"
ANSWERS = f"neo/{THING}/+/+"  # accepted and rejected of every operation


@pytest.fixture
def serve(tmp_path, mosquitto):
    """serve(protocol=..., **mqtt settings) -> a started ServedAgent; all stopped at the end."""
    made = []

    def start(protocol="5", scripted=True, **changes):
        served = ServedAgent(tmp_path / "state", mqtt_settings(mosquitto, THING, protocol, **changes), scripted=scripted)
        made.append(served.start())
        return served

    yield start
    for served in made:
        served.stop(flush_timeout=1)


@pytest.fixture
def client(mosquitto):
    made = []

    def connect(protocol="5", **kwargs):
        raw = RawClient(mosquitto, protocol, **kwargs)
        made.append(raw)
        return raw

    yield connect
    for raw in made:
        raw.close()


def request_v5(raw: RawClient, operation: str, payload, thing: str = THING) -> tuple[dict, bytes]:
    """Publish with a Response Topic and Correlation Data; the answer and its correlation data."""
    response_topic = f"test/{raw.client_id}/responses"
    if response_topic not in raw.filters:
        raw.subscribe(response_topic)
    correlation = uuid.uuid4().bytes
    raw.publish(f"neo/{thing}/{operation}", payload, response_topic=response_topic, correlation_data=correlation)
    message = raw.wait_for(lambda m: m.topic == response_topic and correlation_of(m) == correlation)
    return body(message), correlation_of(message)


def correlation_of(message) -> bytes | None:
    return getattr(message.properties, "CorrelationData", None)


def wait_until(predicate, timeout: float = WAIT_S) -> None:
    waiting.wait_until(predicate, timeout)


def request_v3(raw: RawClient, operation: str, payload: dict) -> tuple[str, dict]:
    """Publish with a clientToken; ("accepted"|"rejected", the answer)."""
    if ANSWERS not in raw.filters:
        raw.subscribe(ANSWERS)
    token = uuid.uuid4().hex
    raw.publish(f"neo/{THING}/{operation}", {**payload, "clientToken": token})
    message = raw.wait_for(lambda m: body(m).get("clientToken") == token)
    assert message.topic.startswith(f"neo/{THING}/{operation}/")
    return message.topic.rsplit("/", 1)[1], body(message)


# --- requests and answers -------------------------------------------------------------------
def test_mqtt5_answers_on_the_response_topic_with_correlation_data(serve, client):
    serve("5")
    raw = client("5")
    raw.subscribe(ANSWERS)
    answer, correlation = request_v5(raw, "CreateCompilationJob", scripted_request("v5-job"))
    assert answer == {"CompilationJobArn": "arn:aws:sagemaker:us-east-1:000000000000:compilation-job/v5-job"}
    assert correlation is not None
    error, _ = request_v5(raw, "DescribeCompilationJob", {"CompilationJobName": "nope"})
    assert error["error"]["code"] == "ResourceNotFound"
    time.sleep(0.5)  # an accepted/rejected publish would have arrived by now
    assert not [m for m in raw.messages if m.topic.endswith(("/accepted", "/rejected"))]


def test_mqtt311_accepted_and_rejected_echo_the_client_token(serve, client):
    serve("3.1.1")
    raw = client("3.1.1")
    outcome, answer = request_v3(raw, "CreateCompilationJob", scripted_request("v3-job"))
    assert outcome == "accepted"
    assert answer["CompilationJobArn"].endswith("/v3-job")
    outcome, answer = request_v3(raw, "CreateCompilationJob", scripted_request("v3-job"))
    assert outcome == "rejected"
    assert answer["error"]["code"] == "ResourceInUse"
    assert set(answer) == {"clientToken", "error"} and set(answer["error"]) == {"code", "message"}


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_every_operation(serve, client, protocol):
    served = serve(protocol)
    raw = client(protocol)

    def call(operation, payload):
        if protocol == "5":
            answer, _ = request_v5(raw, operation, payload)
            return ("rejected" if "error" in answer else "accepted"), answer
        return request_v3(raw, operation, payload)

    outcome, answer = call("CreateCompilationJob", scripted_request("op-job", "stage=compile sleep=30"))
    assert outcome == "accepted", answer
    served.wait_status("op-job", ("INPROGRESS",), timeout=WAIT_S)
    outcome, answer = call("DescribeCompilationJob", {"CompilationJobName": "op-job"})
    assert outcome == "accepted" and answer["CompilationJobStatus"] == "INPROGRESS"
    outcome, answer = call("ListCompilationJobs", {"StatusEquals": "INPROGRESS"})
    assert [s["CompilationJobName"] for s in answer["CompilationJobSummaries"]] == ["op-job"]
    outcome, answer = call("DeleteCompilationJob", {"CompilationJobName": "op-job"})
    assert outcome == "rejected" and answer["error"]["code"] == "ValidationException"
    assert "Stop it first" in answer["error"]["message"]
    outcome, answer = call("StopCompilationJob", {"CompilationJobName": "op-job"})
    assert outcome == "accepted" and answer.get("error") is None
    served.wait_status("op-job", ("STOPPED",), timeout=WAIT_S)
    outcome, answer = call("DeleteCompilationJob", {"CompilationJobName": "op-job"})
    assert outcome == "accepted"
    outcome, answer = call("DescribeCompilationJob", {"CompilationJobName": "op-job"})
    assert outcome == "rejected" and answer["error"]["code"] == "ResourceNotFound"


def test_validation_errors_come_back_in_sagemakers_words(serve, client):
    serve("3.1.1")
    raw = client("3.1.1")
    outcome, answer = request_v3(raw, "CreateCompilationJob", scripted_request("bad name!"))
    assert outcome == "rejected"
    assert answer["error"]["code"] == "ValidationException"
    assert "Value 'bad name!' at 'compilationJobName' failed to satisfy constraint" in answer["error"]["message"]


def test_payload_over_the_limit_and_bad_json_are_rejected(serve, client):
    served = serve("5", max_payload_bytes=2048)
    raw = client("5")
    big = scripted_request("big-job", Tags=[{"Key": "pad", "Value": "x" * 256}] * 10)
    answer, _ = request_v5(raw, "CreateCompilationJob", big)
    assert answer["error"]["code"] == "ValidationException"
    assert "at most 2048 bytes" in answer["error"]["message"]
    answer, _ = request_v5(raw, "CreateCompilationJob", b"{not json")
    assert answer["error"]["code"] == "SerializationException"
    answer, _ = request_v5(raw, "ListCompilationJobs", b"[1, 2]")
    assert answer["error"]["code"] == "SerializationException"
    assert served.agent.api.call("ListCompilationJobs", {})["CompilationJobSummaries"] == []


def test_requests_on_another_things_topics_and_unsafe_response_topics_are_ignored(serve, client, mosquitto):
    served = serve("5")
    raw = client("5")
    raw.subscribe("neo/#", "test/+/responses")
    raw.publish("neo/edge-2/CreateCompilationJob", scripted_request("other-thing"), response_topic="test/x/responses")
    # A requester must not make the agent publish requests or events in its name.
    for unsafe in ("neo/edge-2/CreateCompilationJob", f"neo/{THING}/jobs/forged/events", "$SYS/x", "test/+/x"):
        raw.publish(f"neo/{THING}/ListCompilationJobs", {}, response_topic=unsafe, correlation_data=b"u")
    answer, _ = request_v5(raw, "ListCompilationJobs", {})  # answered after everything above
    assert answer == {"CompilationJobSummaries": []}
    assert [m.topic for m in raw.messages if m.topic.startswith("neo/edge-2/")] == ["neo/edge-2/CreateCompilationJob"]
    assert not [m for m in raw.messages if correlation_of(m) == b"u" and not m.topic.endswith("/ListCompilationJobs")]
    assert served.agent.api.call("ListCompilationJobs", {})["CompilationJobSummaries"] == []


def test_allow_lists_refuse_other_roles_with_access_denied(serve, client):
    allowed_role = "arn:aws:iam::111111111111:role/neo-compile"
    served = serve("3.1.1", allowed_accounts=("111111111111",), allowed_role_arns=(allowed_role,))
    raw = client("3.1.1")
    for role, why in (("arn:aws:iam::123456789012:role/neo", "account 123456789012"),
                      ("arn:aws:iam::111111111111:role/other", "not allowed"),
                      ("not-an-arn", "not an IAM role ARN")):
        outcome, answer = request_v3(raw, "CreateCompilationJob", scripted_request("denied", RoleArn=role))
        assert outcome == "rejected" and answer["error"]["code"] == "AccessDeniedException", answer
        assert why in answer["error"]["message"]
    outcome, answer = request_v3(raw, "CreateCompilationJob", scripted_request("allowed", RoleArn=allowed_role))
    assert outcome == "accepted", answer
    outcome, _ = request_v3(raw, "DescribeCompilationJob", {"CompilationJobName": "allowed"})
    assert outcome == "accepted"  # no role in the other operations: the topic's ACL decides
    names = [s["CompilationJobName"] for s in served.agent.api.call("ListCompilationJobs", {})["CompilationJobSummaries"]]
    assert names == ["allowed"]


@pytest.mark.faults
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_requests_sent_while_the_agent_is_offline_arrive_after_it_reconnects(serve, client, protocol):
    first = serve(protocol)
    first.stop(flush_timeout=1)  # disconnects; the broker keeps the persistent session
    raw = client(protocol)
    raw.subscribe(ANSWERS)
    raw.publish(f"neo/{THING}/CreateCompilationJob", {**scripted_request("queued-job"), "clientToken": "t-1"})
    serve(protocol)  # the same thing name, so the same session
    message = raw.wait_for(lambda m: body(m).get("clientToken") == "t-1")
    assert message.topic == f"neo/{THING}/CreateCompilationJob/accepted"


# --- events ---------------------------------------------------------------------------------------
def events_of(raw: RawClient, name: str) -> list[dict]:
    return [body(m) for m in raw.on_topic(topics.events_topic(THING, name))]


def test_events_of_a_real_compile_arrive_in_order_with_the_metrics_summary(serve, client, tmp_path):
    served = serve("5", scripted=False)
    raw = client("5")
    raw.subscribe(topics.events_filter(THING))
    archive = make_sample_archive(tmp_path)
    answer, _ = request_v5(raw, "CreateCompilationJob", real_request("real-job", archive, tmp_path / "out"))
    assert "CompilationJobArn" in answer
    final = raw.wait_for(lambda m: topics.is_final(body(m)), timeout=JOB_WAIT_S)
    assert body(final)["status"] == "COMPLETED", body(final)
    events = events_of(raw, "real-job")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # nothing lost while online
    assert [e["status"] for e in events if e["kind"] == "status"] == ["STARTING", "INPROGRESS", "COMPLETED"]
    stages = []
    for e in events:
        if e["kind"] == "progress" and (not stages or stages[-1] != e["stage"]):
            stages.append(e["stage"])
    assert stages == ["fetch", "prepare", "compile", "verify", "benchmark", "package", "upload"]
    percents = [e["percent"] for e in events if e["kind"] == "progress"]
    assert percents == sorted(percents) and percents[-1] >= 95
    summary = events[-1]["summary"]
    describe = served.agent.api.call("DescribeCompilationJob", {"CompilationJobName": "real-job"})
    assert summary["artifactUri"] == describe["ModelArtifacts"]["S3ModelArtifacts"]
    assert summary["artifactDigest"] == describe["ModelDigests"]["ArtifactDigest"]
    metrics = summary["metrics"]
    assert metrics["tvm"]["latency_ms"]["p50"] > 0 and metrics["onnxruntime"]["latency_ms"]["p50"] > 0
    assert metrics["speedup_vs_onnxruntime"] == pytest.approx(
        metrics["onnxruntime"]["latency_ms"]["p50"] / metrics["tvm"]["latency_ms"]["p50"])
    assert metrics["verification"]["passed"] is True
    assert len(final.payload) < 4096


def test_events_of_other_channels_jobs_are_not_published(serve, client):
    served = serve("5")
    raw = client("5")
    raw.subscribe(topics.events_filter(THING))
    served.agent.api.call("CreateCompilationJob", scripted_request("local-job"))  # the local API's channel
    request_v5(raw, "CreateCompilationJob", scripted_request("mqtt-job"))
    raw.wait_for(lambda m: topics.is_final(body(m)) and body(m)["jobName"] == "mqtt-job")
    served.wait_status("local-job")
    assert events_of(raw, "local-job") == []


def test_delete_publishes_deleted_and_a_reused_name_gets_its_final_status_again(serve, client):
    served = serve("5")
    raw = client("5")
    raw.subscribe(topics.events_filter(THING))
    for round_ in range(2):
        request_v5(raw, "CreateCompilationJob", scripted_request("reused"))
        served.wait_status("reused")
        request_v5(raw, "DeleteCompilationJob", {"CompilationJobName": "reused"})
        raw.wait_for(lambda m: len([e for e in events_of(raw, "reused") if e["kind"] == "deleted"]) == round_ + 1)
    events = events_of(raw, "reused")
    assert [e["status"] for e in events if e["kind"] == "status" and e["status"] == "COMPLETED"] == ["COMPLETED"] * 2
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))  # increasing across the delete: clients never drop the new job


# --- delivery through restarts --------------------------------------------------------------------
@pytest.mark.faults
def test_broker_killed_and_restarted_during_a_real_compile(serve, mosquitto, tmp_path):
    """THE property: the job completes and a subscribed client sees COMPLETED exactly once."""
    served = serve("5", scripted=False)
    compiling = threading.Event()
    served.agent.events.subscribe(lambda e: e.stage == "compile" and compiling.set())
    seen: list[dict] = []
    settings = mqtt_settings(mosquitto, "watcher", "5")
    with RemoteAgent(settings, THING, persistent=True) as remote:
        remote.watch("crash-job", seen.append)
        archive = make_sample_archive(tmp_path)
        remote.call("CreateCompilationJob", real_request("crash-job", archive, tmp_path / "out"))
        assert compiling.wait(JOB_WAIT_S)
        mosquitto.kill()
        status = served.agent.api.call("DescribeCompilationJob", {"CompilationJobName": "crash-job"})
        assert status["CompilationJobStatus"] == "INPROGRESS"  # the broker died mid-compile
        time.sleep(2)
        mosquitto.start()
        describe = served.wait_status("crash-job")
        assert describe["CompilationJobStatus"] == "COMPLETED", describe["FailureReason"]
        deadline = time.monotonic() + 60
        while not any(topics.is_final(e) for e in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # room for a duplicate to show up (it must not)
    finals = [e for e in seen if e["kind"] == "status" and e["status"] == "COMPLETED"]
    assert len(finals) == 1, seen
    assert finals[0]["summary"]["metrics"]["verification"]["passed"] is True


@pytest.mark.faults
def test_final_status_published_while_the_broker_is_down_is_delivered_once_after_it_returns(serve, mosquitto):
    served = serve("5")
    seen: list[dict] = []
    with RemoteAgent(mqtt_settings(mosquitto, "watcher", "5"), THING, persistent=True) as remote:
        remote.watch("offline-job", seen.append)
        remote.call("CreateCompilationJob", scripted_request("offline-job", "stage=compile sleep=1"))
        wait_until(lambda: any(e["status"] == "INPROGRESS" for e in seen))
        wait_until(lambda: not served.transport.outbox.pending())  # INPROGRESS acknowledged
        mosquitto.kill()
        assert served.wait_status("offline-job", timeout=WAIT_S)["CompilationJobStatus"] == "COMPLETED"
        assert [e.key for e in served.transport.outbox.pending()] == ["COMPLETED"]
        mosquitto.start()
        deadline = time.monotonic() + 60
        while not any(topics.is_final(e) for e in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
    assert [e["status"] for e in seen if e["kind"] == "status"].count("COMPLETED") == 1, seen
    assert served.transport.outbox.pending() == []


@pytest.mark.faults
def test_agent_restart_resends_a_final_status_the_broker_never_acknowledged(tmp_path, mosquitto, client):
    settings = mqtt_settings(mosquitto, THING, "3.1.1")
    raw = client("3.1.1", persistent=True)  # keeps its subscription through the broker restart
    raw.subscribe(topics.events_filter(THING))
    first = ServedAgent(tmp_path / "state", settings).start()
    first.agent.api_for("mqtt").call("CreateCompilationJob", scripted_request("restart-job", "stage=compile sleep=1"))
    raw.wait_for(lambda m: body(m).get("status") == "INPROGRESS")
    wait_until(lambda: not first.transport.outbox.pending())  # INPROGRESS acknowledged
    mosquitto.kill()
    first.wait_status("restart-job", timeout=WAIT_S)
    first.stop(flush_timeout=0.5)  # the broker is down: COMPLETED stays pending in the outbox
    assert [e.key for e in first.transport.outbox.pending()] == ["COMPLETED"]
    mosquitto.start()
    second = ServedAgent(tmp_path / "state", settings).start()
    try:
        raw.wait_for(lambda m: body(m).get("status") == "COMPLETED", timeout=60)
        assert second.transport.binding.flush(WAIT_S)
        time.sleep(1)
    finally:
        second.stop(flush_timeout=1)
    completed = [body(m) for m in raw.messages if body(m).get("status") == "COMPLETED"]
    assert len({e["seq"] for e in completed}) == 1  # re-sent, maybe more than once, always as the same event
    assert second.transport.outbox.pending() == []


# --- the connection ---------------------------------------------------------------------------------
def test_tls_with_a_client_certificate(tmp_path, iot_broker, pki):
    """mTLS, as against AWS IoT Core: the broker requires a certificate from its CA."""
    settings = mqtt_settings(iot_broker, iot_fixtures.THING, "5", tls_ca=str(pki.ca), tls_cert=str(pki.client_cert),
                             tls_key=str(pki.client_key))
    settings.port = iot_broker.tls_port
    with ServedAgent(tmp_path / "state", settings) as served:
        assert served.transport.session.connected
        assert served.transport.url == f"mqtts://127.0.0.1:{iot_broker.tls_port} thing {iot_fixtures.THING}"
        raw = RawClient(iot_broker, "5")  # on the plain listener
        try:
            answer, _ = request_v5(raw, "ListCompilationJobs", {}, thing=iot_fixtures.THING)
        finally:
            raw.close()
        assert answer == {"CompilationJobSummaries": []}


def test_a_broker_that_refuses_the_login_is_a_configuration_error(tmp_path):
    with Mosquitto(tmp_path / "closed", extra_config=["allow_anonymous false"]) as closed:
        started = time.monotonic()
        with pytest.raises(ConfigError, match="refused the connection: Not authorized.*mqtt.username"):
            ServedAgent(tmp_path / "state", mqtt_settings(closed, THING, "5")).start()
        assert time.monotonic() - started < WAIT_S / 2  # the refusal, not a timeout


class _OutcomeAtWake(threading.Event):
    """An Event that records what a waiter woken by it would read: (connected, refused)."""

    def __init__(self, session: PahoSession):
        super().__init__()
        self.session, self.seen = session, []

    def set(self) -> None:
        self.seen.append((self.session.connected, self.session.refused))
        super().set()


@pytest.mark.parametrize("anonymous", [True, False], ids=["accepted", "refused"])
def test_start_reads_the_outcome_of_the_connack_that_woke_it(tmp_path, anonymous):
    """start() wakes on the CONNACK and returns `connected`: paho's thread must record the outcome
    before it wakes the caller, or an accepted connection reads as "cannot reach the broker"."""
    config = [] if anonymous else ["allow_anonymous false"]
    with Mosquitto(tmp_path / "broker", extra_config=config) as broker:
        session = PahoSession(MqttConfig(host=broker.host, port=broker.port), "wake-order", persistent=False)
        session._answered = _OutcomeAtWake(session)
        try:
            assert session.start(WAIT_S) is anonymous
        finally:
            session.close()
    connected, refused = session._answered.seen[0]
    assert connected is anonymous
    assert bool(refused) is not anonymous


def test_a_second_start_keeps_the_live_connection_and_nagle_is_off(mosquitto):
    """`with RemoteAgent(...).connect()` starts the session twice. The second start used to call
    connect_async again, which closed the live socket: paho reconnected after its reconnect
    delay, and every publish made meanwhile waited for it (each first call took 2 s)."""
    session = PahoSession(MqttConfig(host=mosquitto.host, port=mosquitto.port), "started-twice", persistent=False)
    try:
        assert session.start(WAIT_S)
        sock = session._client.socket()
        assert session.start(WAIT_S)
        assert session._client.socket() is sock and sock.fileno() != -1
        # an answer published right after a PUBACK must not wait for the broker's delayed ACK
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        session.close()
    connects = [line for line in mosquitto.log_path.read_text().splitlines()
                if "New client connected" in line and "started-twice" in line]
    assert len(connects) == 1, connects


@pytest.mark.faults
def test_an_agent_started_before_its_broker_connects_when_it_comes(tmp_path):
    broker = Mosquitto(tmp_path / "late")
    served = ServedAgent(tmp_path / "state", mqtt_settings(broker, THING, "3.1.1"), connect_timeout=0.5).start()
    try:
        assert not served.transport.session.connected
        broker.start()
        raw = RawClient(broker, "3.1.1")
        try:
            deadline = time.monotonic() + 60  # paho's backoff: a retry within RECONNECT_MAX_S
            while not served.transport.session.connected:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            time.sleep(0.5)  # its SUBSCRIBE follows the CONNACK
            outcome, answer = request_v3(raw, "ListCompilationJobs", {})
            assert outcome == "accepted"
        finally:
            raw.close()
    finally:
        served.stop(flush_timeout=1)
        broker.kill()


def test_paho_errors_are_translated_at_the_edge(tmp_path):
    with pytest.raises(ConfigError, match="mqtt.tls_cert"):
        PahoSession(MqttConfig(tls_cert="/etc/hostname", tls_key="/etc/hostname"), "x")
    session = PahoSession(MqttConfig(), "x")
    with pytest.raises(MqttError, match="cannot publish to 'a/\\+/b'"):
        session.publish("a/+/b", b"{}")
