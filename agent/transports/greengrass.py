"""AWS IoT Greengrass v2: the agent as a component, serving its API on the nucleus's connection.

Started by the Greengrass nucleus (greengrass/recipe.yaml), `neo-agent run` finds the nucleus's
IPC socket and token (AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT, SVCUID) in its
environment, and the daemon serves the agent through the nucleus (agent/transports/
greengrass_ipc.py) instead of opening an AWS IoT Core connection of its own, which would need a
certificate of its own and, with the thing name as client id, would keep displacing the
nucleus's. The thing is AWS_IOT_THING_NAME, which the nucleus sets.

    IPC operation                            what for
    SubscribeToIoTCore (QoS 1)               neo/{thing}/{Operation}: requests, answered exactly as the
                                             iotcore transport answers them (agent/transports/binding.py)
    PublishToIoTCore (QoS 1)                 .../accepted, .../rejected, neo/{thing}/jobs/{job}/events, and
                                             a client's Response Topic if it is neo/{thing}/clients/+/responses
                                             (any other gets its answer on accepted/rejected: the recipe's
                                             accessControl allows the agent no other topic)
    Subscribe/PublishToIoTCore               $aws/things/{thing}/jobs/...: AWS IoT Jobs, by the iotjobs
                                             transport, unchanged, on the same connection
    UpdateState                              RUNNING once serving; ERRORED when the nucleus closes one of the
                                             agent's subscriptions (the nucleus then restarts the component)
    PutComponentMetric                       at each job's end: METRICS (see below)
    SubscribeToValidateConfigurationUpdates  a deployment's new configuration is checked with the agent's own
      + SendConfigurationValidityReport      rules (greengrass_config.check): ACCEPTED, or REJECTED with the
                                             error, which names section.key; the deployment then fails
    SubscribeToConfigurationUpdate           logged: each key reaches the agent as a NEO_AGENT_* variable of
                                             the Run step, and the nucleus restarts a component whose
                                             interpolated lifecycle changed, which applies it

Delivery: job events that must arrive (status changes, deletes) go through the outbox
(`greengrass-outbox.sqlite3`) as on every MQTT transport, and count as delivered once the nucleus
has taken them (its spooler; see greengrass_ipc). One the nucleus refused is offered again every
RESEND_S; everything pending is offered again at the next start.

Metrics: the nucleus takes PutComponentMetric only from components whose name starts with "aws."
(its ComponentMetricIPCEventStreamAgent), so for this component it answers UnauthorizedError;
the agent says so once and stops sending them. They stay for a nucleus without that rule, and the
recipe's accessControl names them (aws.greengrass.ipc.componentmetric).
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from typing import Any, Callable, Mapping

from agent.errors import ApiError, ConfigError
from agent.jobs.events import Event
from agent.transports import topics
from agent.transports.greengrass_config import check
from agent.transports.greengrass_ipc import (
    IPC_TIMEOUT_S, IpcConnection, IpcRefused, translate,
)
from agent.transports.iotcore import topic_matches
from agent.transports.topics import Incoming

log = logging.getLogger(__name__)

NAME = "greengrass"
OUTBOX_FILE = "greengrass-outbox.sqlite3"
THING_ENV = "AWS_IOT_THING_NAME"  # the core device's thing, set by the nucleus for its components
RESEND_S = 30.0  # an outbox entry the nucleus refused is offered again this often
METRICS = {  # name (at most 32 bytes, the nucleus's rule) -> MetricUnitType
    "JobsCompleted": "COUNT", "JobsFailed": "COUNT", "JobsStopped": "COUNT",
    "QueueDepth": "COUNT",  # jobs waiting to start, sampled at each job's end
    "CompileSeconds": "SECONDS",  # a COMPLETED job's compile time (metrics.json's compile_seconds)
}
VALIDATE_STREAM = "SubscribeToValidateConfigurationUpdates"
UPDATE_STREAM = "SubscribeToConfigurationUpdate"


class GreengrassTransport:
    """Neo's API through the Greengrass nucleus: the iotcore transport's topics and payloads, over IPC."""

    name = NAME

    def __init__(self, agent, connection: IpcConnection):
        from agent.config import DEFAULT_MQTT_MAX_PAYLOAD_BYTES
        from agent.transports.binding import MqttApiBinding
        from agent.transports.outbox import Outbox

        self.connection = connection
        self.api = agent.api_for(self.name)
        self.url = f"Greengrass IPC as {connection.thing}"
        self.response_filter = topics.client_response_topic(connection.thing, "+")
        self.outbox = Outbox(agent.config.state_dir / OUTBOX_FILE)
        # Made now, before the agent starts, so the recovery's status events reach the outbox.
        self.binding = MqttApiBinding(self.api, agent.events, connection.thing, self._publish,
                                      outbox=self.outbox, max_payload_bytes=DEFAULT_MQTT_MAX_PAYLOAD_BYTES)
        self._events = agent.events
        self._unsubscribe: Callable[[], None] | None = None
        self._metrics_on = True
        self._errored = False
        self._resend = threading.Event()
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None
        self._started = False

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe through the nucleus, watch the configuration, report RUNNING; GreengrassError if refused."""
        for topic_filter in self.binding.request_filters():
            self.connection.route(topic_filter, self._on_request)
        self.connection.on_connect(lambda resumed: self.binding.on_connected())
        self.connection.on_stream_lost(self._on_stream_lost)
        self.connection.start()
        self._started = True
        self._unsubscribe = self._events.subscribe(self._on_event)
        self._stopping.clear()
        self._watch_configuration()
        self._ticker = threading.Thread(target=self._tick, name="greengrass-resend", daemon=True)
        self._ticker.start()
        self._update_state("RUNNING")

    def stop(self, timeout: float) -> None:
        """Hand what is owed to the nucleus (up to `timeout`), then let go of the connection. Safe twice."""
        if not self._started:
            return
        self._started = False
        deadline = time.monotonic() + timeout
        self._stopping.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self.connection.connected:
            self.binding.flush(timeout)
        self.binding.on_disconnected()
        self.connection.stop(max(0.0, deadline - time.monotonic()))

    # --- requests and answers --------------------------------------------------------------------
    def _on_request(self, message: Incoming) -> None:
        response_topic = message.response_topic
        if response_topic and not topic_matches(self.response_filter, response_topic):
            log.warning("greengrass: a request asked for its answer on %r; this component may publish answers "
                        "only to %s, so it goes to accepted/rejected", response_topic, self.response_filter)
            response_topic = None
        self.binding.handle_request(message.topic, message.payload, response_topic, message.correlation_data)

    def _publish(self, outgoing) -> None:
        """The binding's publish: QoS 1, never blocking; the nucleus's answer goes back on the dispatch thread."""
        future = self.connection.publish(outgoing.topic, outgoing.payload, correlation_data=outgoing.correlation_data)
        outbox_id = outgoing.outbox_id

        def settle(done: concurrent.futures.Future) -> None:
            if done.exception() is None:
                if outbox_id is not None:
                    self.connection.call_soon(lambda: self.binding.delivered(outbox_id))
                return
            log.warning("%s", done.exception())
            if outbox_id is not None:
                self._resend.set()
                self.connection.call_soon(lambda: self.binding.delivery_failed(outbox_id))

        future.add_done_callback(settle)

    def _tick(self) -> None:
        """Offer refused outbox entries again every RESEND_S (the nucleus sends no reconnect to wait for)."""
        while not self._stopping.wait(RESEND_S):
            if self._resend.is_set():
                self._resend.clear()
                self.connection.call_soon(self.binding.on_connected)

    # --- the component's life: state, metrics, configuration -------------------------------------
    def _update_state(self, state: str) -> None:
        client = self.connection.client
        if client is None:
            return
        try:
            client.update_state_async(state=state).result(IPC_TIMEOUT_S)
            log.info("greengrass: reported %s to the nucleus", state)
        except Exception as exc:  # the nucleus learns of the process's end anyway
            log.warning("%s", translate(exc, f"UpdateState {state}"))

    def _on_stream_lost(self, what: str) -> None:
        if not self._started or self._errored:
            return
        self._errored = True  # once: the nucleus restarts the whole component
        log.error("greengrass: the nucleus closed %s; reporting ERRORED so that it restarts the component", what)
        self._update_state("ERRORED")

    def _on_event(self, event: Event) -> None:
        if self._metrics_on and event.kind == "status" and event.status in topics.TERMINAL_STATUSES:
            self.connection.call_soon(lambda: self._put_metrics(event))

    def _put_metrics(self, event: Event) -> None:
        """A job ended: Jobs<Status> 1, the queue's depth, and a COMPLETED job's compile seconds."""
        from awsiot.greengrasscoreipc.model import Metric

        client = self.connection.client
        if client is None or not self._metrics_on:
            return
        values: dict[str, float] = {f"Jobs{event.status.title()}": 1.0, "QueueDepth": float(self._queue_depth())}
        compile_seconds = (event.metrics or {}).get("compile_seconds")
        if event.status == "COMPLETED" and isinstance(compile_seconds, (int, float)):
            values["CompileSeconds"] = float(compile_seconds)
        metrics = [Metric(name=name, unit=METRICS[name], value=value) for name, value in values.items()]
        try:
            client.put_component_metric_async(metrics=metrics).result(IPC_TIMEOUT_S)
        except Exception as exc:
            error = translate(exc, "PutComponentMetric")
            if isinstance(error, IpcRefused):
                self._metrics_on = False
                log.warning("greengrass: the nucleus takes no component metrics from this component (it allows "
                            "them only to components named aws.*); no more will be sent: %s", error)
            else:
                log.warning("%s", error)

    def _queue_depth(self) -> int:
        """Jobs waiting to start (STARTING), through the API like any caller's ListCompilationJobs."""
        count, token = 0, None
        try:
            while True:
                body: dict[str, Any] = {"StatusEquals": "STARTING", "MaxResults": 100}
                if token:
                    body["NextToken"] = token
                page = self.api.call("ListCompilationJobs", body)
                count += len(page.get("CompilationJobSummaries", []))
                token = page.get("NextToken")
                if not token:
                    return count
        except ApiError as exc:
            log.warning("greengrass: could not count the queue: %s", exc)
            return count

    def _watch_configuration(self) -> None:
        """Subscribe to deployment-time validation and to configuration changes; a refusal is logged."""
        client = self.connection.client
        subscriptions = [
            (VALIDATE_STREAM, client.subscribe_to_validate_configuration_updates_async, {}, self._validate),
            (UPDATE_STREAM, client.subscribe_to_configuration_update_async, {"key_path": []}, self._updated),
        ]
        for what, subscribe, arguments, handler in subscriptions:
            try:
                response, stream = subscribe(
                    **arguments,
                    on_stream_event=lambda event, handler=handler: self.connection.call_soon(lambda: handler(event)),
                    on_stream_error=lambda error, what=what: self._stream_error(what, error),
                    on_stream_closed=lambda what=what: self.connection.stream_closed(what))
                response.result(IPC_TIMEOUT_S)
            except Exception as exc:
                problem = f"{what}: the nucleus did not answer" if isinstance(exc, concurrent.futures.TimeoutError) \
                    else translate(exc, what)
                log.warning("%s; deployments' configuration changes go unchecked", problem)
                continue
            self.connection.add_stream(what, stream)

    def _stream_error(self, what: str, error: Exception) -> bool:
        log.error("%s", translate(error, f"{what}: stream error"))
        return True  # close it; the connection reports the loss

    def _validate(self, events) -> None:
        """A deployment proposes a configuration: ACCEPTED, or REJECTED with the key that is wrong."""
        from awsiot.greengrasscoreipc.model import ConfigurationValidityReport, ConfigurationValidityStatus

        update = events.validate_configuration_update_event
        deployment = update.deployment_id
        try:
            check(update.configuration or {}, source=f"deployment {deployment}")
            status, message = ConfigurationValidityStatus.ACCEPTED, "the agent accepts this configuration"
        except ConfigError as exc:
            status, message = ConfigurationValidityStatus.REJECTED, str(exc)
        except Exception as exc:  # a bug: refuse rather than let a configuration through unchecked
            log.exception("greengrass: checking deployment %s's configuration failed", deployment)
            status, message = ConfigurationValidityStatus.REJECTED, f"the agent could not check it: {exc}"
        log.info("greengrass: deployment %s's configuration %s: %s", deployment, status, message)
        report = ConfigurationValidityReport(status=status, deployment_id=deployment, message=message)
        try:
            self.connection.client.send_configuration_validity_report_async(
                configuration_validity_report=report).result(IPC_TIMEOUT_S)
        except Exception as exc:  # the deployment times out waiting and fails: the safe side
            log.error("%s", translate(exc, f"SendConfigurationValidityReport {deployment}"))

    def _updated(self, events) -> None:
        key_path = "/" + "/".join(events.configuration_update_event.key_path or [])
        log.info("greengrass: configuration %s changed; it reaches the agent through the Run step's environment, "
                 "so it applies when the nucleus restarts the component", key_path)


def greengrass_transports(agent, *, environ: Mapping[str, str] | None = None,
                          client_factory: Callable[[], Any] | None = None) -> list:
    """The daemon's entry under Greengrass: this transport, and iotjobs on the same IPC connection."""
    from agent.transports.iotjobs import IotJobsTransport

    environ = os.environ if environ is None else environ
    thing = environ.get(THING_ENV, "")
    try:
        topics.check_thing_name(thing)
    except ValueError as exc:
        raise ConfigError(f"{THING_ENV}: {exc}; the Greengrass nucleus sets it for its components") from None
    connection = IpcConnection(thing, client_factory=client_factory)
    transports: list = [GreengrassTransport(agent, connection)]
    if agent.config.iotcore.jobs:
        transports.append(IotJobsTransport(agent, connection))
    return transports

