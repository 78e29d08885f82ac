"""The plain MQTT transport: the API on any MQTT broker, through paho-mqtt 2.x (MQTT 5 or 3.1.1).

This module owns paho. `PahoSession` is one connection with what the agent and its remote
client need from it; `MqttTransport` drives the channel-independent MqttApiBinding
(agent/transports/binding.py) with it. Topics and payloads: agent/transports/topics.py.

Delivery, in both directions, rests on three things:
  * QoS 1 everywhere, and a persistent session (MQTT 5: Clean Start off and a Session Expiry
    Interval; 3.1.1: Clean Session off), with the thing name as client id. The broker queues
    requests for the agent while it is disconnected and delivers them after it reconnects.
  * paho owns reconnects (exponential backoff, RECONNECT_MIN_S to RECONNECT_MAX_S); every
    CONNACK re-subscribes, in case the broker lost the session (a restart without persistence).
  * The outbox (agent/transports/outbox.py): status events wait on disk until the broker's
    PUBACK, and go out again after a reconnect or an agent restart. Clients drop duplicates by
    the events' `seq`.

    transport = MqttTransport.from_agent(agent)     # before agent.start(): recovery events count
    transport.start(); agent.start(); ...; agent.shutdown(); transport.stop(timeout=10)
"""
from __future__ import annotations

import logging
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import MqttConfig
from agent.errors import AgentError, ConfigError
from agent.transports import topics
from agent.transports.topics import Incoming
from agent.transports.binding import AccessPolicy, MqttApiBinding, Outgoing
from agent.transports.outbox import Outbox

log = logging.getLogger(__name__)

NAME = "mqtt"
OUTBOX_FILE = "mqtt-outbox.sqlite3"
RECONNECT_MIN_S = 1  # paho doubles the wait after each failed attempt, up to the max
RECONNECT_MAX_S = 30
SESSION_EXPIRY_S = 7 * 86400  # MQTT 5: how long the broker keeps the agent's session (and queued requests)
CONNECT_TIMEOUT_S = 10.0  # start() waits this long for the first CONNACK, then goes on (paho keeps trying)
SUBSCRIBE_TIMEOUT_S = 10.0


class MqttError(AgentError):
    """The broker could not be reached, refused us, or refused a subscription or a message."""


class SubscriptionRefused(MqttError):
    """The broker's ACL does not let this client subscribe to a filter."""


class PahoSession:
    """One paho client on a background thread, with a persistent session by default.

    Subscriptions are remembered and renewed on every connect. `publish(..., token=X)` calls
    `on_delivered(X)` once the broker acknowledges that message (PUBACK); paho keeps
    unacknowledged messages in memory and sends them again after a reconnect.
    """

    def __init__(
        self,
        settings: MqttConfig,
        client_id: str,
        *,
        persistent: bool = True,
        session_expiry_s: int = SESSION_EXPIRY_S,
        on_message: Callable[[Incoming], None] | None = None,
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        on_delivered: Callable[[Any], None] | None = None,
    ):
        self.settings = settings
        self.client_id = client_id
        self.v5 = settings.protocol == "5"
        self.persistent = persistent
        self.session_expiry_s = session_expiry_s if persistent else 0
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.on_delivered = on_delivered
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if self.v5 else not persistent,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
        )
        if settings.username:
            self._client.username_pw_set(settings.username, settings.password or None)
        if settings.tls:
            try:
                self._client.tls_set(ca_certs=settings.tls_ca or None, certfile=settings.tls_cert or None,
                                     keyfile=settings.tls_key or None)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"mqtt.tls_cert: cannot use the TLS files (tls_ca, tls_cert, tls_key): {exc}") from exc
        self._client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._filters: list[str] = []
        self._connected = threading.Event()
        self._answered = threading.Event()  # a CONNACK came, accepting or refusing
        self._cond = threading.Condition()
        self._tokens: dict[int, Any] = {}  # mid -> delivery token, until the PUBACK
        self._early_acks: set[int] = set()  # PUBACKs that beat publish() back to its caller
        self._subacks: dict[int, list] = {}
        self._started = False
        self._closing = False
        self.refused: str = ""  # the broker's reason when it last refused the connection (bad login, ...)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # --- life cycle -------------------------------------------------------------------------
    def start(self, timeout: float = CONNECT_TIMEOUT_S) -> bool:
        """Connect in the background; True once connected within `timeout` (else paho keeps trying).

        Returns early, False, when the broker refuses the connection (`refused` says why).
        Once started, it only reports: a second connect_async would close the live socket, and
        paho's thread would open another after its reconnect delay, holding every publish
        made meanwhile (`with RemoteAgent(...).connect()` did that, 2 s on each first call).
        """
        if self._started:
            self._answered.wait(timeout)
            return self.connected
        properties = None
        if self.v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.session_expiry_s
        try:
            self._client.connect_async(
                self.settings.host, int(self.settings.port), keepalive=int(self.settings.keepalive),
                clean_start=not self.persistent if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                properties=properties,
            )
        except (OSError, ValueError) as exc:
            raise MqttError(f"cannot connect to {self.settings.host}:{self.settings.port}: {exc}") from exc
        self._client.loop_start()
        self._started = True
        self._answered.wait(timeout)
        return self.connected

    def close(self) -> None:
        """Disconnect cleanly (the broker keeps a persistent session) and stop paho's thread."""
        if not self._started:
            return
        self._started = False
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    # --- subscriptions ----------------------------------------------------------------------
    def subscribe(self, filters: Iterable[str], timeout: float = SUBSCRIBE_TIMEOUT_S) -> bool:
        """Subscribe (QoS 1) now if connected, and again at every connect.

        True once the broker granted every filter; False when offline (it happens at the
        connect). MqttError if the broker refuses a filter or does not answer in `timeout`.
        """
        filters = [f for f in filters if f not in self._filters]
        self._filters.extend(filters)
        if not filters or not self.connected:
            return not filters
        rc, mid = self._client.subscribe([(f, topics.QOS) for f in filters])
        if rc != paho.MQTT_ERR_SUCCESS:
            return False  # the connection just dropped: the next connect subscribes
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, timeout):
                raise MqttError(f"no SUBACK for {filters} within {timeout} s")
            codes = self._subacks.pop(mid)
        refused = [f for f, code in zip(filters, codes) if code.is_failure]
        if refused:
            raise SubscriptionRefused(f"the broker refused the subscription to {refused}: {[str(c) for c in codes]}")
        return True

    # --- publishing -------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, response_topic: str | None = None,
                correlation_data: bytes | None = None, token: Any = None) -> None:
        """Publish with QoS 1; with a `token`, on_delivered(token) follows the broker's PUBACK."""
        properties = None
        if self.v5 and (response_topic or correlation_data is not None):
            properties = Properties(PacketTypes.PUBLISH)
            if response_topic:
                properties.ResponseTopic = response_topic
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        try:
            info = self._client.publish(topic, payload, qos=topics.QOS, properties=properties)
        except ValueError as exc:  # a wildcard in the topic, a payload over MQTT's limit
            raise MqttError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            raise MqttError(f"cannot publish to {topic!r}: paho's outgoing queue is full")
        with self._cond:
            acked = info.mid in self._early_acks
            if acked:
                self._early_acks.discard(info.mid)
            else:
                self._tokens[info.mid] = token
        if acked and token is not None:
            _safely(self.on_delivered, token)

    # --- paho callbacks (paho's network thread) ----------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        # `_answered` wakes start(), which then reads `connected` and `refused`: set them first.
        if reason_code.is_failure:
            self.refused = str(reason_code)
            self._answered.set()
            log.error("mqtt: %s:%s refused the connection: %s", self.settings.host, self.settings.port, reason_code)
            return
        self.refused = ""
        _no_delay(client.socket())
        log.info("mqtt: connected to %s:%s as %s (session present: %s)", self.settings.host,
                 self.settings.port, self.client_id, flags.session_present)
        if self._filters:
            client.subscribe([(f, topics.QOS) for f in self._filters])
        self._connected.set()
        self._answered.set()
        _safely(self.on_connected)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            log.log(logging.INFO if self._closing else logging.WARNING, "mqtt: disconnected from %s:%s: %s",
                    self.settings.host, self.settings.port, reason_code)
        self._connected.clear()
        _safely(self.on_disconnected)

    def _on_message(self, client, userdata, message) -> None:
        props = getattr(message, "properties", None)
        incoming = Incoming(
            topic=message.topic,
            payload=bytes(message.payload),
            response_topic=getattr(props, "ResponseTopic", None) if self.v5 else None,
            correlation_data=getattr(props, "CorrelationData", None) if self.v5 else None,
        )
        _safely(self.on_message, incoming)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # paho calls this holding its own lock: take only ours, briefly.
        with self._cond:
            if mid not in self._tokens:
                self._early_acks.add(mid)
                return
            token = self._tokens.pop(mid)
        if reason_code.is_failure:
            log.warning("mqtt: the broker refused message %d: %s", mid, reason_code)
        if token is not None:
            _safely(self.on_delivered, token)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self._subacks[mid] = list(reason_codes)
            self._cond.notify_all()


def _no_delay(sock) -> None:
    """TCP_NODELAY on the broker connection, which paho leaves off. With Nagle's algorithm an
    answer published right after the request's PUBACK waits for the broker's delayed ACK of
    that PUBACK (40 ms on Linux): every request answered that way took about 90 ms."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:  # no socket (closed meanwhile) or not TCP
        log.debug("mqtt: TCP_NODELAY not set: %s", exc)


def _safely(callback: Callable | None, *args: Any) -> None:
    """Run one of our callbacks in paho's thread: an exception there would end that thread,
    and with it every reconnect, so it is logged instead."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        log.exception("mqtt: %s failed", getattr(callback, "__qualname__", callback))


class MqttTransport:
    """The agent's API and job events on an MQTT broker, as thing `settings.thing_name`."""

    name = NAME

    def __init__(self, api, events, settings: MqttConfig, outbox_path: Path | str):
        self.settings = settings
        self.outbox = Outbox(outbox_path)
        self.binding = MqttApiBinding(
            api, events, settings.thing_name, self._publish, outbox=self.outbox,
            max_payload_bytes=settings.max_payload_bytes,
            access=AccessPolicy(settings.allowed_accounts, settings.allowed_role_arns),
        )
        self.session = PahoSession(
            settings, settings.thing_name, persistent=True,
            on_message=self._on_message, on_connected=self.binding.on_connected,
            on_disconnected=self.binding.on_disconnected, on_delivered=self.binding.delivered,
        )
        self._stopped = False

    @classmethod
    def from_agent(cls, agent, settings: MqttConfig | None = None) -> "MqttTransport":
        settings = settings or agent.config.mqtt
        return cls(agent.api_for(NAME), agent.events, settings, agent.config.state_dir / OUTBOX_FILE)

    @property
    def url(self) -> str:
        """Where it serves, for the daemon's ready line."""
        scheme = "mqtts" if self.settings.tls else "mqtt"
        return f"{scheme}://{self.settings.host}:{self.settings.port} thing {self.settings.thing_name}"

    def start(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Connect and subscribe; if the broker is not there yet, go on: paho keeps trying.

        A broker that refuses the login or the subscriptions is a configuration error
        (ConfigError naming the keys): retrying would not help.
        """
        where = f"{self.settings.host}:{self.settings.port}"
        connected = self.session.start(timeout)
        if not connected and self.session.refused:
            self.session.close()
            raise ConfigError(f"mqtt: the broker at {where} refused the connection: {self.session.refused} "
                              "(check mqtt.username, mqtt.password, mqtt.tls_cert, mqtt.thing_name)")
        try:
            self.session.subscribe(self.binding.request_filters())  # if offline: at the connect
        except SubscriptionRefused as exc:
            self.session.close()
            raise ConfigError(f"mqtt.thing_name: {exc} (check the broker's ACL)") from exc
        except MqttError as exc:  # the connection dropped meanwhile: the next connect subscribes
            log.warning("mqtt: %s", exc)
        if connected:
            log.info("mqtt: serving thing %s on %s (MQTT %s)", self.settings.thing_name, where, self.settings.protocol)
        else:
            log.warning("mqtt: %s not reachable yet; retrying in the background", where)

    def stop(self, timeout: float = 10.0) -> None:
        """Wait (up to `timeout`) until the broker has every pending status, then disconnect.

        Events after this are still recorded in the outbox, and sent after the next start.
        Safe to call twice.
        """
        if self._stopped:
            return
        self._stopped = True
        if not self.binding.flush(timeout):
            log.warning("mqtt: %d event(s) not acknowledged by the broker; sent after the next start",
                        len(self.outbox.pending()))
        self.session.close()
        self.binding.on_disconnected()

    def _publish(self, message: Outgoing) -> None:
        self.session.publish(message.topic, message.payload, correlation_data=message.correlation_data,
                             token=message.outbox_id)

    def _on_message(self, message: Incoming) -> None:
        self.binding.handle_request(message.topic, message.payload, message.response_topic, message.correlation_data)
