"""A stand-in for the Greengrass nucleus, behind GreengrassCoreIPCClientV2's interface.

The Greengrass nucleus cannot run here: it is a Java program that needs a thing registered in
AWS IoT, that thing's certificate and AWS itself (to reach IoT Core, the Token Exchange Service
and deployments). What the agent depends on from it is its IPC interface, so the tests give the
agent `StandInClient` in place of awsiotsdk's GreengrassCoreIPCClientV2: the same method names
and signatures (STANDIN_METHODS; test_greengrass checks them against the installed awsiotsdk with
inspect, so the stand-in cannot drift from it), awsiotsdk's own model types in and out
(IoTCoreMessage, MQTTMessage, QOS, Metric, ConfigurationValidityReport, UnauthorizedError, ...)
and stream callbacks on a thread pool, as the real client calls them.

Behind it, `FakeNucleus` does what the nucleus does that the agent can observe, after the
nucleus's own source (aws-greengrass-nucleus: MqttProxyIPCAgent, ComponentMetricIPCEventStreamAgent,
DynamicComponentConfigurationValidator):

  - authorizes SubscribeToIoTCore and PublishToIoTCore against the recipe's accessControl, with
    {iot:thingName} interpolated: a policy's topic filter must cover the requested topic or
    filter, else UnauthorizedError("Not Authorized");
  - PutComponentMetric only for components named aws.* (the nucleus's rule), unless told not to;
    the metric names must be in the componentmetric policy;
  - proxies IoT Core: what the agent publishes goes to a `cloud`, what the cloud delivers on a
    subscribed filter goes to the agent's stream. MemoryCloud is IoT Core in this process;
    BrokerCloud is a real Mosquitto broker (for the IoT Jobs stand-in, tests/iotjobs_service.py);
  - records UpdateState calls and metrics; proposes a deployment's configuration and waits for
    the component's validity report; announces configuration changes; can close every stream
    from its side (as a nucleus that drops the component does).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import time
from typing import Any, Callable

from awsiot.greengrasscoreipc import model

STANDIN_METHODS = (
    "publish_to_iot_core_async", "subscribe_to_iot_core_async", "update_state_async", "put_component_metric_async",
    "subscribe_to_validate_configuration_updates_async", "send_configuration_validity_report_async",
    "subscribe_to_configuration_update_async", "close",
)
MQTT_PROXY = "aws.greengrass.ipc.mqttproxy"
COMPONENT_METRIC = "aws.greengrass.ipc.componentmetric"
WAIT_S = 15.0


def covers(policy: str, requested: str) -> bool:
    """Whether a policy's topic filter covers a requested topic or filter (nucleus MqttTopic.topicIsSupersetOf)."""
    want, have = policy.split("/"), requested.split("/")
    for index, part in enumerate(want):
        if part == "#":
            return True
        if index >= len(have):
            return False
        if part == "+":
            if have[index] == "#":
                return False
            continue
        if part != have[index]:
            return False
    return len(want) == len(have)


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT delivery: does a subscription's filter match a published topic."""
    return covers(topic_filter, topic) and not (topic.startswith("$") and topic_filter[:1] in "+#")


@dataclasses.dataclass(frozen=True)
class CloudMessage:
    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None


class MemoryCloud:
    """AWS IoT Core in this process: what the agent published, and a way to send to its subscriptions."""

    def __init__(self):
        self.published: list[CloudMessage] = []
        self._new = threading.Condition()
        self._subscriptions: list[tuple[str, Callable[[CloudMessage], None]]] = []

    def subscribe(self, topic_filter: str, deliver: Callable[[CloudMessage], None]) -> None:
        self._subscriptions.append((topic_filter, deliver))

    def publish(self, message: CloudMessage) -> None:
        with self._new:
            self.published.append(message)
            self._new.notify_all()
        self.send(message)

    def send(self, message: CloudMessage) -> None:
        """A message arriving at IoT Core (a remote client's request, say)."""
        for topic_filter, deliver in list(self._subscriptions):
            if matches(topic_filter, message.topic):
                deliver(message)

    def wait(self, predicate: Callable[[CloudMessage], bool], timeout: float = WAIT_S) -> CloudMessage:
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for message in self.published:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no such message within {timeout} s; published: "
                                         f"{[m.topic for m in self.published]}")
                self._new.wait(remaining)

    def close(self) -> None:
        pass


class BrokerCloud:
    """AWS IoT Core as a real Mosquitto broker: the nucleus's MQTT connection, made with paho."""

    def __init__(self, host: str, port: int, client_id: str):
        import paho.mqtt.client as mqtt

        self._subscriptions: list[tuple[str, Callable[[CloudMessage], None]]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def subscribe(self, topic_filter: str, deliver: Callable[[CloudMessage], None]) -> None:
        self._subscriptions.append((topic_filter, deliver))
        # The broker takes a connection's packets in order: this SUBSCRIBE is in place before any
        # request the agent publishes next (whose answer it is for).
        self.client.subscribe(topic_filter, qos=1)

    def publish(self, message: CloudMessage) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.PUBLISH)
        if message.response_topic:
            properties.ResponseTopic = message.response_topic
        if message.correlation_data:
            properties.CorrelationData = message.correlation_data
        self.client.publish(message.topic, message.payload, qos=1, properties=properties)

    def _on_message(self, client, userdata, raw) -> None:
        props = getattr(raw, "properties", None)
        message = CloudMessage(raw.topic, raw.payload, getattr(props, "ResponseTopic", None),
                               getattr(props, "CorrelationData", None))
        for topic_filter, deliver in list(self._subscriptions):
            if matches(topic_filter, message.topic):
                deliver(message)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class StandInStream:
    """An IPC stream operation: close() ends it, and its on_stream_closed runs, as the real one's does."""

    def __init__(self, nucleus: "FakeNucleus", kind: str, on_event, on_closed):
        self.nucleus, self.kind, self.on_event, self.on_closed = nucleus, kind, on_event, on_closed
        self.closed = False

    def deliver(self, event) -> None:
        if not self.closed and self.on_event is not None:
            self.nucleus.pool.submit(self.on_event, event)

    def close(self) -> concurrent.futures.Future:
        self._end()
        return _done(None)

    def _end(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.on_closed is not None:
            self.nucleus.pool.submit(self.on_closed)


class FakeNucleus:
    """The nucleus as its components see it over IPC (see the module docstring)."""

    def __init__(self, recipe: dict, thing: str, cloud=None, *, metrics_for_aws_only: bool = True):
        self.thing = thing
        self.component = recipe["ComponentName"]
        self.access = _interpolate(recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"], thing)
        self.cloud = cloud if cloud is not None else MemoryCloud()
        self.metrics_for_aws_only = metrics_for_aws_only
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="ipc-standin")
        self.streams: list[StandInStream] = []
        self.states: list[str] = []
        self.metrics: list[list[model.Metric]] = []
        self.refused: list[tuple[str, str]] = []  # (operation, resource) the nucleus said no to
        self.metric_calls = 0
        self.fail_publishes = 0  # the next N PublishToIoTCore get ServiceError (the spooler is full)
        self.reports: queue.Queue = queue.Queue()
        self.clients: list[StandInClient] = []

    def client(self) -> "StandInClient":
        """What GreengrassCoreIPCClientV2() returns in a component the nucleus started."""
        made = StandInClient(self)
        self.clients.append(made)
        return made

    # --- authorization (MqttProxyIPCAgent.doAuthorization; AuthorizationHandler) ----------------
    def authorized(self, service: str, operation: str, resource: str) -> bool:
        for policy in self.access.get(service, {}).values():
            if operation in policy["operations"] or "*" in policy["operations"]:
                if any(r == "*" or (covers(r, resource) if service == MQTT_PROXY else r == resource)
                       for r in policy["resources"]):
                    return True
        self.refused.append((operation, resource))
        return False

    # --- what tests do as the nucleus --------------------------------------------------------------
    def propose(self, configuration: dict, deployment_id: str = "deployment-1") -> model.ConfigurationValidityReport:
        """A deployment with a new configuration: ask the component, wait for its report."""
        event = model.ValidateConfigurationUpdateEvents(validate_configuration_update_event=(
            model.ValidateConfigurationUpdateEvent(configuration=configuration, deployment_id=deployment_id)))
        for stream in self._open("validate"):
            stream.deliver(event)
        report = self.reports.get(timeout=WAIT_S)
        assert report.deployment_id == deployment_id
        return report

    def change(self, key_path: list[str]) -> None:
        event = model.ConfigurationUpdateEvents(configuration_update_event=model.ConfigurationUpdateEvent(
            component_name=self.component, key_path=key_path))
        for stream in self._open("configuration"):
            stream.deliver(event)

    def close_streams(self) -> None:
        """Close every stream from the nucleus's side."""
        for stream in self._open():
            stream._end()

    def wait_for_state(self, state: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while state not in self.states:
            if time.monotonic() > deadline:
                raise AssertionError(f"no UpdateState {state} within {timeout} s; got {self.states}")
            time.sleep(0.02)

    def subscriptions(self) -> list[str]:
        return [stream.kind.split(" ", 1)[1] for stream in self._open() if stream.kind.startswith("iotcore ")]

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)
        self.cloud.close()

    def _open(self, kind: str | None = None) -> list[StandInStream]:
        return [s for s in self.streams if not s.closed and (kind is None or s.kind.split(" ")[0] == kind)]


class StandInClient:
    """GreengrassCoreIPCClientV2's methods that the agent uses, with the real signatures."""

    def __init__(self, nucleus: FakeNucleus):
        self.nucleus = nucleus
        self.closed = False

    def publish_to_iot_core_async(self, *, topic_name=None, qos=None, payload=None, retain=None, user_properties=None,
                                  message_expiry_interval_seconds=None, correlation_data=None, response_topic=None,
                                  payload_format=None, content_type=None):
        self._check_open()
        if qos not in (model.QOS.AT_MOST_ONCE, model.QOS.AT_LEAST_ONCE):
            return _failed(model.InvalidArgumentsError(message=f"Invalid QoS value: {qos}"))
        if not self.nucleus.authorized(MQTT_PROXY, "aws.greengrass#PublishToIoTCore", topic_name):
            return _failed(model.UnauthorizedError(message="Not Authorized"))
        if self.nucleus.fail_publishes > 0:
            self.nucleus.fail_publishes -= 1
            return _failed(model.ServiceError(message=f"Publish to topic {topic_name} failed: spool is full"))
        body = payload.encode() if isinstance(payload, str) else payload
        correlation = correlation_data.encode() if isinstance(correlation_data, str) else correlation_data
        self.nucleus.cloud.publish(CloudMessage(topic_name, body, response_topic, correlation))
        return _done(model.PublishToIoTCoreResponse())

    def subscribe_to_iot_core_async(self, *, topic_name=None, qos=None, stream_handler=None, on_stream_event=None,
                                    on_stream_error=None, on_stream_closed=None):
        self._check_open()
        stream = StandInStream(self.nucleus, f"iotcore {topic_name}", on_stream_event, on_stream_closed)
        if not self.nucleus.authorized(MQTT_PROXY, "aws.greengrass#SubscribeToIoTCore", topic_name):
            return _failed(model.UnauthorizedError(message="Not Authorized")), stream
        self.nucleus.streams.append(stream)
        self.nucleus.cloud.subscribe(topic_name, lambda message: stream.deliver(model.IoTCoreMessage(
            message=model.MQTTMessage(topic_name=message.topic, payload=message.payload,
                                      response_topic=message.response_topic,
                                      correlation_data=message.correlation_data))))
        return _done(model.SubscribeToIoTCoreResponse()), stream

    def update_state_async(self, *, state=None):
        self._check_open()
        self.nucleus.states.append(state)
        return _done(model.UpdateStateResponse())

    def put_component_metric_async(self, *, metrics=None):
        self._check_open()
        nucleus = self.nucleus
        nucleus.metric_calls += 1
        if nucleus.metrics_for_aws_only and not nucleus.component.startswith("aws."):
            return _failed(model.UnauthorizedError(message=(
                f"Principal {nucleus.component} is not authorized to perform "
                f"{COMPONENT_METRIC}:aws.greengrass#PutComponentMetric ")))
        for metric in metrics or []:
            if len(metric.name.encode()) > 32 or metric.value < 0:
                return _failed(model.InvalidArgumentsError(message="Invalid argument found in PutComponentMetricRequest"))
            if not nucleus.authorized(COMPONENT_METRIC, "aws.greengrass#PutComponentMetric", metric.name):
                return _failed(model.UnauthorizedError(message=f"not authorized for metric {metric.name}"))
        nucleus.metrics.append(list(metrics))
        return _done(model.PutComponentMetricResponse())

    def subscribe_to_validate_configuration_updates_async(self, *, stream_handler=None, on_stream_event=None,
                                                          on_stream_error=None, on_stream_closed=None):
        self._check_open()
        stream = StandInStream(self.nucleus, "validate", on_stream_event, on_stream_closed)
        self.nucleus.streams.append(stream)
        return _done(model.SubscribeToValidateConfigurationUpdatesResponse()), stream

    def send_configuration_validity_report_async(self, *, configuration_validity_report=None):
        self._check_open()
        self.nucleus.reports.put(configuration_validity_report)
        return _done(model.SendConfigurationValidityReportResponse())

    def subscribe_to_configuration_update_async(self, *, component_name=None, key_path=None, stream_handler=None,
                                                on_stream_event=None, on_stream_error=None, on_stream_closed=None):
        self._check_open()
        stream = StandInStream(self.nucleus, "configuration", on_stream_event, on_stream_closed)
        self.nucleus.streams.append(stream)
        return _done(model.SubscribeToConfigurationUpdateResponse()), stream

    def close(self, *, executor_wait=True):
        self.closed = True
        for stream in self.nucleus._open():
            stream._end()
        return _done(None)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the IPC connection is closed")


def _interpolate(value: Any, thing: str) -> Any:
    """{iot:thingName} as the nucleus interpolates it (interpolateComponentConfiguration: true)."""
    if isinstance(value, dict):
        return {_interpolate(k, thing): _interpolate(v, thing) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, thing) for item in value]
    return value.replace("{iot:thingName}", thing) if isinstance(value, str) else value


def _done(result) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(result)
    return future


def _failed(error: Exception) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_exception(error)
    return future
