"""The AWS IoT Core transport: awsiotsdk's MQTT 5 client, mTLS, persistent session, outbox.

AWS IoT Core itself cannot run here, so its stand-in is a real Mosquitto broker with a TLS
listener that requires a client certificate from a CA the tests make (tests/transports/
iot_fixtures.py). The agent connects to it exactly as to IoT Core: mtls_from_path with the
thing's certificate, key and CA, client id = thing name. Requests come from a paho client on
the broker's plain listener, as any MQTT client of the agent would send them.
"""
from __future__ import annotations

import concurrent.futures
import json
import queue
import shutil
import subprocess
import sys
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from awscrt import mqtt5
from awscrt.exceptions import AwsCrtError
from awsiot import mqtt5_client_builder

from agent.config import IotCoreConfig
from agent.errors import ConfigError
from agent.service.agent import Agent
from agent.transports import topics
from agent.transports.iotcore import (
    ConnectRefused, IotCoreConnection, IotCoreError, IotCoreTransport, PublishFailed, SubscribeFailed,
    iotcore_transports, topic_matches, translate,
)
from tests.waiting import wait_until
from tests.mosquitto import mosquitto_binary
from tests.runner.conftest import make_config, scripted_job
from tests.service.daemon_process import REPO, clean_env
from tests.transports.iot_fixtures import THING, iot_broker, iot_settings, pki  # noqa: F401 (fixtures)

WAIT_S = 30.0

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")


class Requester:
    """A plain MQTT client of the agent: publishes requests, collects answers and events."""

    def __init__(self, broker, protocol=mqtt.MQTTv311):
        self.messages: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"requester-{uuid.uuid4().hex[:8]}",
                                  protocol=protocol)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        for topic_filter in (*topics.answer_filters(THING), topics.events_filter(THING), f"replies/{THING}/#"):
            self.client.subscribe(topic_filter, qos=1)
        time.sleep(0.3)

    def request(self, operation: str, body: dict, **publish) -> dict:
        token = uuid.uuid4().hex
        self.client.publish(topics.request_topic(THING, operation), json.dumps({**body, "clientToken": token}),
                            qos=1, **publish)
        return self.wait(lambda m, b: b.get("clientToken") == token)[1]

    def wait(self, predicate, timeout: float = WAIT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            body = json.loads(message.payload or b"{}")
            if predicate(message, body):
                return message, body
        raise AssertionError(f"no such message within {timeout} s")

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def served(tmp_path, iot_broker, iot_settings):
    """An agent (scripted pipeline) serving its API over the mTLS connection, and a requester."""
    config = make_config(tmp_path, iotcore=iot_settings, file_uri_channels=["iotcore"])  # scripted jobs: file://
    agent = Agent(config)
    connection = IotCoreConnection(iot_settings)
    transport = IotCoreTransport(agent, connection)
    agent.start()
    transport.start()
    requester = Requester(iot_broker)
    yield agent, connection, transport, requester
    requester.close()
    transport.stop(5)
    agent.shutdown()


def test_requests_over_mtls_are_answered_with_the_api(served):
    agent, connection, _, requester = served
    assert connection.connected
    answer = requester.request("ListCompilationJobs", {})
    assert answer["CompilationJobSummaries"] == []
    job = scripted_job("iot-1", "stage=compile")
    created = requester.request("CreateCompilationJob", job.request)
    assert created["CompilationJobArn"].endswith(":compilation-job/iot-1")
    _, final = requester.wait(lambda m, b: b.get("jobName") == "iot-1" and b.get("status") == "COMPLETED")
    assert final["kind"] == "status"
    described = requester.request("DescribeCompilationJob", {"CompilationJobName": "iot-1"})
    assert described["CompilationJobStatus"] == "COMPLETED"
    assert agent.store.get("iot-1").channel == "iotcore"


def test_api_errors_go_to_rejected_in_sagemaker_words(served):
    *_, requester = served
    message, body = None, None
    token = uuid.uuid4().hex
    requester.client.publish(topics.request_topic(THING, "DescribeCompilationJob"),
                             json.dumps({"CompilationJobName": "nope", "clientToken": token}), qos=1)
    message, body = requester.wait(lambda m, b: b.get("clientToken") == token)
    assert message.topic.endswith("/DescribeCompilationJob/rejected")
    assert body["error"]["code"] == "ResourceNotFound"


def test_mqtt5_response_topic_and_correlation_data(served, iot_broker):
    *_, requester = served
    v5 = Requester(iot_broker, protocol=mqtt.MQTTv5)
    try:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"replies/{THING}/me"
        props.CorrelationData = b"corr-42"
        v5.client.publish(topics.request_topic(THING, "ListCompilationJobs"), b"{}", qos=1, properties=props)
        message, body = v5.wait(lambda m, b: m.topic == f"replies/{THING}/me")
        assert message.properties.CorrelationData == b"corr-42"
        assert body["CompilationJobSummaries"] == []
    finally:
        v5.close()


def test_a_connection_without_a_client_certificate_is_refused(iot_settings):
    """The broker demands a certificate: awscrt's TLS failure surfaces as ConnectRefused."""
    def no_certificate(cert_filepath, pri_key_filepath, **kwargs):
        return mqtt5_client_builder.new_default_builder(**kwargs)

    connection = IotCoreConnection(iot_settings, client_factory=no_certificate)
    with pytest.raises(ConnectRefused, match="CONNECT 127.0.0.1:.*AWS_IO_TLS.*check iotcore.endpoint") as caught:
        connection.start()
    assert not connection.connected
    assert isinstance(caught.value, ConfigError)  # so `neo-agent run` exits 2 with the message


def test_a_certificate_from_another_ca_is_refused(iot_settings, pki):
    settings = IotCoreConfig(**{**iot_settings.__dict__, "cert": str(pki.stranger_cert), "key": str(pki.stranger_key)})
    connection = IotCoreConnection(settings)
    with pytest.raises(ConnectRefused):
        connection.start()


def test_neo_agent_run_exits_2_when_iot_core_refuses_the_certificate(tmp_path, iot_settings, pki):
    settings = {**iot_settings.__dict__, "cert": str(pki.stranger_cert), "key": str(pki.stranger_key)}
    env = clean_env(**{f"NEO_AGENT_IOTCORE_{key.upper()}": str(value) for key, value in settings.items()})
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--http", "127.0.0.1:0", "--state-dir",
                           str(tmp_path / "state")], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "neo-agent: configuration: CONNECT 127.0.0.1:" in proc.stderr and "iotcore.cert" in proc.stderr


def test_missing_certificate_file_is_a_config_error_naming_the_key(iot_settings, tmp_path):
    settings = IotCoreConfig(**{**iot_settings.__dict__, "cert": str(tmp_path / "absent.pem")})
    with pytest.raises(ConfigError, match="iotcore.cert: cannot read"):
        IotCoreConnection(settings).start()


def test_settings_are_validated_naming_the_key():
    with pytest.raises(ConfigError, match="iotcore.thing_name"):
        IotCoreConfig(endpoint="x.iot.us-east-1.amazonaws.com", cert="c", key="k").validate()
    with pytest.raises(ConfigError, match="iotcore.keep_alive_s"):
        IotCoreConfig(endpoint="e", thing_name="t", cert="c", key="k", keep_alive_s=5).validate()
    IotCoreConfig().validate()  # off: nothing to check


@pytest.mark.faults
def test_session_is_resumed_and_a_status_set_while_offline_still_arrives(served, iot_broker):
    """Broker down while a job ends: the COMPLETED event waits in the outbox and goes out after
    the CRT client reconnects by itself (resumed session: no resubscribe needed)."""
    agent, connection, transport, requester = served
    requester.close()
    iot_broker.kill()
    deadline = time.monotonic() + WAIT_S
    while connection.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not connection.connected
    transport.binding.api.call("CreateCompilationJob", scripted_job("offline-1", "stage=compile").request)
    _wait(lambda: agent.store.get("offline-1").status.value == "COMPLETED")
    assert [e.key for e in transport.outbox.pending()][-1] == "COMPLETED"
    iot_broker.start()
    watcher = Requester(iot_broker)
    try:
        _wait(lambda: connection.connected)
        _wait(lambda: not transport.outbox.pending())
        assert connection.session_resumed is True
        watcher.request("ListCompilationJobs", {})  # the old subscriptions still serve
    finally:
        watcher.close()


def test_resubscribes_when_the_broker_lost_the_session(served, iot_broker):
    """A broker that comes back without the session (its data gone): the agent subscribes again."""
    _, connection, _, requester = served
    requester.close()
    iot_broker.kill()
    shutil.rmtree(iot_broker.data_dir)
    iot_broker.data_dir.mkdir()
    iot_broker.start()
    _wait(lambda: connection.connected)
    assert connection.session_resumed is False
    watcher = Requester(iot_broker)
    try:
        assert watcher.request("ListCompilationJobs", {})["CompilationJobSummaries"] == []
    finally:
        watcher.close()


def test_daemon_entry_builds_iotcore_and_iotjobs_on_one_connection(tmp_path, iot_settings):
    agent = Agent(make_config(tmp_path, iotcore=iot_settings))
    try:
        built = iotcore_transports(agent)
        assert [t.name for t in built] == ["iotcore", "iotjobs"]
        assert built[0].connection is built[1].connection
        assert iotcore_transports(Agent(make_config(tmp_path / "off"))) == []
    finally:
        agent.store.close()


# --- awscrt's errors, translated at this edge ---------------------------------------------
class FakeClient:
    """Stands in for awscrt's client where a broker cannot be made to fail on cue."""

    def __init__(self, puback=None, error=None, suback_codes=None):
        self.puback, self.error, self.suback_codes = puback, error, suback_codes

    def publish(self, packet):
        future = concurrent.futures.Future()
        if self.error:
            future.set_exception(self.error)
        else:
            future.set_result(mqtt5.PublishCompletionData(puback=self.puback))
        return future

    def subscribe(self, packet):
        future = concurrent.futures.Future()
        if self.error:
            future.set_exception(self.error)
        else:
            future.set_result(mqtt5.SubackPacket(reason_codes=self.suback_codes))
        return future


def _with_client(client) -> IotCoreConnection:
    connection = IotCoreConnection(IotCoreConfig(endpoint="e", thing_name=THING, cert="c", key="k"))
    connection._client = client
    return connection


def test_translate_names_the_awscrt_error():
    error = translate(AwsCrtError(1178, "AWS_IO_TLS_ERROR_READ_FAILURE", "Failure during TLS read."), "CONNECT x")
    assert isinstance(error, IotCoreError)
    assert str(error) == "CONNECT x: AWS_IO_TLS_ERROR_READ_FAILURE: Failure during TLS read."


def test_a_puback_failure_reason_is_publish_failed():
    connection = _with_client(FakeClient(puback=mqtt5.PubackPacket(reason_code=mqtt5.PubackReasonCode.NOT_AUTHORIZED)))
    with pytest.raises(PublishFailed, match="PUBACK NOT_AUTHORIZED"):
        connection.publish("neo/t/x", b"{}").result(1)


def test_an_awscrt_publish_error_is_publish_failed():
    crt = AwsCrtError(5134, "AWS_ERROR_MQTT5_USER_REQUESTED_STOP", "stopped")
    connection = _with_client(FakeClient(error=crt))
    future = connection.publish("neo/t/x", b"{}")
    with pytest.raises(PublishFailed, match="AWS_ERROR_MQTT5_USER_REQUESTED_STOP") as caught:
        future.result(1)
    assert isinstance(caught.value, IotCoreError)


def test_a_refused_subscription_is_subscribe_failed():
    connection = _with_client(FakeClient(suback_codes=[mqtt5.SubackReasonCode.GRANTED_QOS_1,
                                                       mqtt5.SubackReasonCode.NOT_AUTHORIZED]))
    with pytest.raises(SubscribeFailed, match="SUBSCRIBE b: refused with NOT_AUTHORIZED"):
        connection.subscribe(["a", "b"]).result(1)


def test_an_awscrt_subscribe_error_is_subscribe_failed():
    connection = _with_client(FakeClient(error=AwsCrtError(1, "AWS_ERROR_MQTT5_SUBSCRIBE_OPTIONS_VALIDATION", "bad")))
    with pytest.raises(SubscribeFailed, match="AWS_ERROR_MQTT5_SUBSCRIBE_OPTIONS_VALIDATION"):
        connection.subscribe(["a/#/b"]).result(1)


def test_a_packet_awscrt_refuses_at_once_is_publish_or_subscribe_failed():
    class Refusing:
        def publish(self, packet):
            raise AwsCrtError(5153, "AWS_ERROR_MQTT5_PUBLISH_OPTIONS_VALIDATION", "invalid publish")

        def subscribe(self, packet):
            raise AwsCrtError(5154, "AWS_ERROR_MQTT5_SUBSCRIBE_OPTIONS_VALIDATION", "invalid subscribe")

    connection = _with_client(Refusing())
    with pytest.raises(PublishFailed, match="PUBLISH neo/#: AWS_ERROR_MQTT5_PUBLISH_OPTIONS_VALIDATION"):
        connection.publish("neo/#", b"{}").result(1)
    with pytest.raises(SubscribeFailed, match="AWS_ERROR_MQTT5_SUBSCRIBE_OPTIONS_VALIDATION"):
        connection.subscribe(["a/#/b"]).result(1)


def test_publishing_before_start_is_publish_failed():
    connection = IotCoreConnection(IotCoreConfig(endpoint="e", thing_name=THING, cert="c", key="k"))
    with pytest.raises(PublishFailed, match="not started"):
        connection.publish("neo/t/x", b"{}").result(1)


@pytest.mark.parametrize("topic_filter, topic, expected", [
    ("neo/t/+/accepted", "neo/t/ListCompilationJobs/accepted", True),
    ("neo/#", "neo/t/jobs/j/events", True),
    ("neo/t/+", "neo/t/a/b", False),
    ("$aws/things/t/jobs/+/update/accepted", "$aws/things/t/jobs/j1/update/accepted", True),
    ("#", "$aws/things/t/jobs/notify", False),  # as brokers do: $ topics need an explicit prefix
    ("+/things/t/jobs/notify", "$aws/things/t/jobs/notify", False),
])
def test_topic_matching(topic_filter, topic, expected):
    assert topic_matches(topic_filter, topic) is expected


def _wait(predicate, timeout: float = WAIT_S) -> None:
    wait_until(predicate, timeout)
