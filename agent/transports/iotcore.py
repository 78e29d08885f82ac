"""AWS IoT Core: the agent's API over MQTT 5 with the thing's certificate (awsiotsdk / awscrt).

This module owns awscrt. `IotCoreConnection` is the one MQTT connection a thing keeps to
AWS IoT Core; the `iotcore` transport (Neo's API on `neo/{thing}/...`, the same topics as the
plain MQTT transport) and the `iotjobs` transport (AWS IoT Jobs) share it.

    client id      the thing name, so IoT Core's policies (`iot:Connect` on client/${thing}) apply
    session        MQTT 5 persistent: the client always asks to rejoin (REJOIN_ALWAYS) with a
                   session expiry (1 h by default), so QoS 1 requests that arrive while the
                   agent is down or reconnecting are delivered when it is back
    reconnects     the CRT client's own, with exponential backoff and full jitter between
                   `min_reconnect_s` and `max_reconnect_s`; the agent never reconnects by hand
    subscriptions  made on the first connection, and again after any connection on which the
                   broker did not resume the session (CONNACK session_present false)
    deliveries     QoS 1; a received message is acknowledged after its handler ran, so one
                   that the agent died handling is delivered again

Errors (awscrt's are translated here, `raise ... from exc`):

    AgentError
    └── IotCoreError          AWS IoT Core could not be used; the message names awscrt's error
        ├── ConnectRefused    the first connection was refused: TLS (certificate, CA) or CONNACK;
        │                     also a ConfigError, as the cure is in iotcore.* (the daemon exits 2)
        ├── PublishFailed     a QoS 1 publish failed or its PUBACK carried a failure reason code
        └── SubscribeFailed   a SUBACK refused a topic filter (usually the thing's IoT policy)
    ConfigError               a certificate, key or CA file is missing or unreadable
"""
from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from typing import Any, Callable

from agent.config import IotCoreConfig
from agent.errors import AgentError, ConfigError
from agent.transports.topics import Incoming

log = logging.getLogger(__name__)

MAX_FILTERS_PER_SUBSCRIBE = 8  # AWS IoT Core's limit per SUBSCRIBE packet
ACK_TIMEOUT_S = 60  # a QoS 1 PUBLISH or SUBSCRIBE not acknowledged in this long is failed
PING_TIMEOUT_MS = 10_000
CONNACK_TIMEOUT_MS = 20_000
STOP_TIMEOUT_S = 10.0
# Failures that retrying cannot cure: the broker refused who we are, or we refused the broker.
PERMANENT_ERROR_MARKS = ("TLS", "PKI", "CERT", "X509")


class IotCoreError(AgentError):
    """AWS IoT Core could not be used for what was asked."""


class ConnectRefused(IotCoreError, ConfigError):
    """The broker refused the first connection, or TLS failed; retrying will not help."""


class PublishFailed(IotCoreError):
    """A QoS 1 publish was not acknowledged with success."""


class SubscribeFailed(IotCoreError):
    """The broker refused a subscription."""


def translate(exc: BaseException, doing: str, kind: type[IotCoreError] = IotCoreError) -> IotCoreError:
    """awscrt's AwsCrtError (name, message) as the agent's error, saying what was being done."""
    name = getattr(exc, "name", type(exc).__name__)
    message = getattr(exc, "message", str(exc))
    return kind(f"{doing}: {name}: {message}")


Handler = Callable[[Incoming], None]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching ('+' one level, '#' the rest). `$` topics match only explicit filters."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    want, have = topic_filter.split("/"), topic.split("/")
    for index, part in enumerate(want):
        if part == "#":
            return True
        if index >= len(have) or (part != "+" and part != have[index]):
            return False
    return len(want) == len(have)


class IotCoreConnection:
    """One MQTT 5 connection to AWS IoT Core, shared by the transports that use it.

    Transports `route` their topic filters to handlers before calling `start`; the connection
    starts with the first `start` and stops with the last `stop`. Handlers run one at a time,
    in arrival order, on the connection's own thread (never on the CRT's event loop, which
    must not block).
    """

    def __init__(self, settings: IotCoreConfig, *, client_factory: Callable[..., Any] | None = None):
        settings.validate()
        self.settings = settings
        self.thing = settings.thing_name
        self._client_factory = client_factory
        self._routes: list[tuple[str, Handler]] = []
        self._listeners: list[Callable[[bool], None]] = []
        self._disconnect_listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._users = 0
        self._client: Any = None
        self._connected = threading.Event()
        self._first_outcome = threading.Event()
        self._first_error: IotCoreError | None = None
        self._stopped = threading.Event()
        self.session_resumed: bool | None = None  # on the latest connection, whether the broker kept the session
        self._subscribed = False  # whether this start's routes were subscribed once (a resumed
        # session from an earlier run may lack a route added since)
        self._inbox: queue.Queue = queue.Queue()
        self._dispatcher: threading.Thread | None = None

    # --- what transports call ------------------------------------------------------------
    def route(self, topic_filter: str, handler: Handler) -> None:
        """Deliver messages on `topic_filter` to `handler`; subscribed on every fresh session."""
        with self._lock:
            self._routes.append((topic_filter, handler))

    def on_connect(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(resumed)` after each successful connection (on the dispatch thread)."""
        with self._lock:
            self._listeners.append(listener)

    def on_disconnect(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after each lost connection (on the dispatch thread)."""
        with self._lock:
            self._disconnect_listeners.append(listener)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the dispatch thread: for work a CRT callback must not do itself (disk)."""
        self._inbox.put(("call", fn, None))

    def subscribe(self, filters: list[str]) -> concurrent.futures.Future:
        """SUBSCRIBE at QoS 1 now (queued by the client while offline); the future ends at the SUBACKs."""
        from awscrt import mqtt5

        done: concurrent.futures.Future = concurrent.futures.Future()
        doing = f"SUBSCRIBE {', '.join(filters)}"
        client = self._client
        if client is None:
            done.set_exception(SubscribeFailed(f"{doing}: the connection is not started"))
            return done
        chunks = [filters[i:i + MAX_FILTERS_PER_SUBSCRIBE] for i in range(0, len(filters), MAX_FILTERS_PER_SUBSCRIBE)]
        try:
            pending = [client.subscribe(mqtt5.SubscribePacket(
                [mqtt5.Subscription(f, mqtt5.QoS.AT_LEAST_ONCE) for f in chunk])) for chunk in chunks]
        except Exception as exc:  # awscrt's, raised at once for a packet it will not send
            done.set_exception(translate(exc, doing, SubscribeFailed))
            return done
        settled = threading.Lock()  # the SUBACKs may land on different CRT threads at once

        def check(_):
            if not all(f.done() for f in pending) or not settled.acquire(blocking=False):
                return
            try:
                for chunk, future in zip(chunks, pending):
                    for topic_filter, code in zip(chunk, future.result().reason_codes):
                        if int(code) >= 128:
                            raise SubscribeFailed(f"SUBSCRIBE {topic_filter}: refused with {_name(code)}")
                done.set_result(None)
            except IotCoreError as exc:
                done.set_exception(exc)
            except Exception as exc:  # awscrt's
                done.set_exception(translate(exc, doing, SubscribeFailed))

        for future in pending:
            future.add_done_callback(check)
        return done

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, response_topic: str | None = None,
                correlation_data: bytes | None = None) -> concurrent.futures.Future:
        """PUBLISH; the future ends at the PUBACK (QoS 1) or when the packet is written (QoS 0).

        While offline, QoS 1 publishes wait in the client's queue and go out on reconnect.
        """
        from awscrt import mqtt5

        done: concurrent.futures.Future = concurrent.futures.Future()
        client = self._client
        if client is None:
            done.set_exception(PublishFailed(f"PUBLISH {topic}: the connection is not started"))
            return done
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS(qos),
                                     response_topic=response_topic, correlation_data_bytes=correlation_data)
        try:
            sent = client.publish(packet)
        except Exception as exc:  # awscrt's, raised at once for a packet it will not send
            done.set_exception(translate(exc, f"PUBLISH {topic}", PublishFailed))
            return done

        def settle(future):
            try:
                puback = future.result().puback
            except Exception as exc:  # awscrt's
                done.set_exception(translate(exc, f"PUBLISH {topic}", PublishFailed))
                return
            code = getattr(puback, "reason_code", None)
            if code is not None and int(code) >= 128:
                done.set_exception(PublishFailed(f"PUBLISH {topic}: PUBACK {_name(code)}"))
            else:
                done.set_result(None)

        sent.add_done_callback(settle)
        return done

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Connect (on the first call), waiting up to connect_timeout_s for the first CONNACK.

        A refusal that retrying cannot cure (TLS, certificate, CONNACK reason code) raises
        ConnectRefused. Anything else (network down, broker unreachable) is left to the CRT
        client's reconnects: start returns, logs it, and subscriptions follow the connection.
        """
        with self._lock:
            self._users += 1
            if self._users > 1:
                return
            self._first_outcome.clear()
            self._first_error = None
            self._stopped.clear()
            self._subscribed = False
            self._client = self._build_client()
            self._dispatcher = threading.Thread(target=self._dispatch, name="iotcore-dispatch", daemon=True)
            self._dispatcher.start()
        self._client.start()
        self._first_outcome.wait(self.settings.connect_timeout_s)
        if self._first_error is not None:
            self._shutdown(STOP_TIMEOUT_S)
            with self._lock:
                self._users = 0
            raise self._first_error
        if not self._connected.is_set():
            log.warning("AWS IoT Core %s:%s not reached within %.0f s; the client keeps trying",
                        self.settings.endpoint, self.settings.port, self.settings.connect_timeout_s)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Disconnect after the last user stops; the broker keeps the session. Safe to call twice."""
        with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users:
                return
        self._shutdown(timeout)

    def _shutdown(self, timeout: float) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.stop()
            self._stopped.wait(timeout)
        self._connected.clear()
        self._inbox.put(None)
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)
        self._dispatcher = None

    def _build_client(self):
        from awscrt import mqtt5
        from awscrt.exceptions import AwsCrtError
        from awsiot import mqtt5_client_builder

        s = self.settings
        for key in ("cert", "key", "ca"):
            path = getattr(s, key)
            if path:
                try:
                    open(path, "rb").close()
                except OSError as exc:
                    raise ConfigError(f"iotcore.{key}: cannot read {path}: {exc.strerror}") from exc
        factory = self._client_factory or mqtt5_client_builder.mtls_from_path
        try:
            return factory(
                cert_filepath=s.cert, pri_key_filepath=s.key, ca_filepath=s.ca or None,
                endpoint=s.endpoint, port=s.port, client_id=s.thing_name,
                keep_alive_interval_sec=s.keep_alive_s,
                session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
                session_expiry_interval_sec=s.session_expiry_s,
                retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.FULL,
                min_reconnect_delay_ms=int(s.min_reconnect_s * 1000),
                max_reconnect_delay_ms=int(s.max_reconnect_s * 1000),
                ping_timeout_ms=PING_TIMEOUT_MS, connack_timeout_ms=CONNACK_TIMEOUT_MS,
                ack_timeout_sec=ACK_TIMEOUT_S,
                offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_QOS0_PUBLISH_ON_DISCONNECT,
                on_publish_received=self._on_publish,
                on_lifecycle_connection_success=self._on_success,
                on_lifecycle_connection_failure=self._on_failure,
                on_lifecycle_disconnection=self._on_disconnection,
                on_lifecycle_stopped=self._on_stopped,
                enable_metrics_collection=False,
            )
        except AwsCrtError as exc:
            raise ConfigError(f"iotcore: the certificate or key cannot be used: {exc.name}: {exc.message}") from exc

    # --- CRT callbacks (event-loop thread: hand over, never block) ------------------------
    def _on_publish(self, data) -> None:
        packet = data.publish_packet
        ack = data.acquire_publish_acknowledgement_control() if data.acquire_publish_acknowledgement_control else None
        payload = packet.payload if isinstance(packet.payload, bytes) else str(packet.payload or "").encode()
        message = Incoming(packet.topic, payload, packet.response_topic, packet.correlation_data_bytes)
        self._inbox.put(("message", message, ack))

    def _on_success(self, data) -> None:
        resumed = bool(data.negotiated_settings and data.negotiated_settings.rejoined_session)
        self.session_resumed = resumed
        log.info("connected to AWS IoT Core %s:%s as %s (session %s)", self.settings.endpoint,
                 self.settings.port, self.thing, "resumed" if resumed else "new")
        self._connected.set()
        self._inbox.put(("connected", resumed, None))
        self._first_outcome.set()

    def _on_failure(self, data) -> None:
        code = getattr(data.connack_packet, "reason_code", None)
        if code is not None and int(code) >= 128:
            error = ConnectRefused(f"CONNECT {self.settings.endpoint}:{self.settings.port}: CONNACK {_name(code)}")
        else:
            kind = ConnectRefused if _permanent(data.exception) else IotCoreError
            error = translate(data.exception, f"CONNECT {self.settings.endpoint}:{self.settings.port}", kind)
        log.warning("%s", error)
        if not self._first_outcome.is_set() and isinstance(error, ConnectRefused):
            self._first_error = ConnectRefused(f"{error}; check iotcore.endpoint, iotcore.cert, iotcore.key and "
                                               "iotcore.ca, and the certificate's IoT policy")
            self._first_outcome.set()

    def _on_disconnection(self, data) -> None:
        self._connected.clear()
        self._inbox.put(("disconnected", None, None))
        if data.exception is not None:
            log.warning("%s", translate(data.exception, "disconnected from AWS IoT Core"))

    def _on_stopped(self, data) -> None:
        self._stopped.set()

    # --- the dispatch thread -------------------------------------------------------------
    def _dispatch(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            kind, value, ack = item
            if kind == "connected":
                self._connected_again(value)
            elif kind == "disconnected":
                self._notify(self._disconnect_listeners)
            elif kind == "call":
                self._notify([value])
            else:
                self._deliver(value)
                if ack is not None and self._client is not None:
                    try:
                        self._client.invoke_publish_acknowledgement(ack)
                    except Exception as exc:  # awscrt's: the connection went; the broker will resend
                        log.info("%s", translate(exc, f"PUBACK {value.topic}"))

    def _connected_again(self, resumed: bool) -> None:
        with self._lock:
            filters = list(dict.fromkeys(f for f, _ in self._routes))
            listeners = list(self._listeners)
        if filters and not (resumed and self._subscribed):
            self.subscribe(filters).add_done_callback(_log_failure)
            self._subscribed = True
        self._notify([lambda listener=listener: listener(resumed) for listener in listeners])

    def _notify(self, calls: list[Callable[[], None]]) -> None:
        for call in calls:
            try:
                call()
            except Exception:
                log.exception("%r failed", call)

    def _deliver(self, message: Incoming) -> None:
        with self._lock:
            handlers = [h for f, h in self._routes if topic_matches(f, message.topic)]
        if not handlers:
            log.debug("no handler for %s", message.topic)
        for handler in handlers:
            try:
                handler(message)
            except Exception:
                log.exception("handler %r failed on %s", handler, message.topic)


def _name(code: Any) -> str:
    """A reason code's MQTT 5 name (awscrt gives enums; a code it does not know stays a number)."""
    return getattr(code, "name", str(code))


def _permanent(exc: BaseException | None) -> bool:
    name = getattr(exc, "name", "") or ""
    return any(mark in name for mark in PERMANENT_ERROR_MARKS)


def _log_failure(future: concurrent.futures.Future) -> None:
    if future.exception() is not None:
        log.error("%s", future.exception())


class IotCoreTransport:
    """Neo's API on AWS IoT Core: the plain MQTT transport's topics and payloads, over `connection`.

    agent/transports/binding.py does the work (requests to the API, answers, job events and
    their outbox); this class gives it the awscrt connection. Job events that must arrive
    (status changes, deletes) wait in `iotcore-outbox.sqlite3` until IoT Core acknowledges
    them, across reconnects and restarts. Who may publish on `neo/{thing}/...` is for the
    thing's IoT policy to decide.
    """

    name = "iotcore"

    def __init__(self, agent, connection: IotCoreConnection):
        from agent.config import DEFAULT_MQTT_MAX_PAYLOAD_BYTES
        from agent.transports.binding import MqttApiBinding
        from agent.transports.outbox import Outbox

        self.connection = connection
        settings = connection.settings
        self.url = f"mqtts://{settings.endpoint}:{settings.port} as {connection.thing}"
        self.outbox = Outbox(agent.config.state_dir / "iotcore-outbox.sqlite3")
        # Made now, before the agent starts, so the recovery's status events reach the outbox.
        self.binding = MqttApiBinding(agent.api_for(self.name), agent.events, connection.thing, self._publish,
                                      outbox=self.outbox, max_payload_bytes=DEFAULT_MQTT_MAX_PAYLOAD_BYTES)
        self._started = False

    def start(self) -> None:
        filters = self.binding.request_filters()
        for topic_filter in filters:
            self.connection.route(topic_filter, self._on_request)
        self.connection.on_connect(lambda resumed: self.binding.on_connected())
        self.connection.on_disconnect(self.binding.on_disconnected)
        self.connection.start()
        self._started = True
        if self.connection.connected:
            self.connection.subscribe(filters).result(self.connection.settings.connect_timeout_s)
            self.connection.call_soon(self.binding.on_connected)

    def stop(self, timeout: float) -> None:
        """Wait (up to `timeout`) for owed events to be acknowledged, then let go of the connection.

        The binding stays subscribed to job events, so a status set during the agent's own
        shutdown still goes into the outbox, for the next start to send.
        """
        if not self._started:
            return
        self._started = False
        deadline = time.monotonic() + timeout
        if self.connection.connected:
            self.binding.flush(timeout)
        self.binding.on_disconnected()
        self.connection.stop(max(0.0, deadline - time.monotonic()))

    def _on_request(self, message: Incoming) -> None:
        self.binding.handle_request(message.topic, message.payload, message.response_topic, message.correlation_data)

    def _publish(self, outgoing) -> None:
        """The binding's publish: QoS 1, never blocking; acknowledgements go back on the dispatch thread."""
        future = self.connection.publish(outgoing.topic, outgoing.payload, correlation_data=outgoing.correlation_data)
        if outgoing.outbox_id is None:
            return

        def settle(done: concurrent.futures.Future) -> None:
            if done.exception() is None:
                self.connection.call_soon(lambda: self.binding.delivered(outgoing.outbox_id))
            else:
                log.warning("%s", done.exception())
                self.connection.call_soon(lambda: self.binding.delivery_failed(outgoing.outbox_id))

        future.add_done_callback(settle)


def iotcore_transports(agent) -> list:
    """The daemon's entry: the iotcore transport, and iotjobs on the same connection, if configured."""
    settings = agent.config.iotcore
    if not settings.enabled:
        return []
    connection = IotCoreConnection(settings)
    transports: list = [IotCoreTransport(agent, connection)]
    if settings.jobs:
        from agent.transports.iotjobs import IotJobsTransport

        transports.append(IotJobsTransport(agent, connection))
    return transports
