"""A device's agent, called over MQTT from anywhere that reaches the broker.

    with RemoteAgent(settings, thing="edge-17") as remote:
        remote.watch("my-job", on_event)                      # before Create: miss nothing
        arn = remote.call("CreateCompilationJob", request)["CompilationJobArn"]

MQTT 5 requests carry a Response Topic (this client's own, `topics.client_response_topic`)
and Correlation Data; MQTT 3.1.1 requests carry a clientToken and the answer comes on the
operation's accepted/rejected topic. Either way `call` returns the answer body or raises
RemoteApiError with the agent's error code (ValidationException, ...).

`watch` delivers each job event once: QoS 1 and the agent's outbox may repeat an event, so
events whose `seq` is not above the last one seen for that job are dropped (see topics.py).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import uuid
from typing import Any, Callable

from agent.config import MqttConfig
from agent.errors import ApiError
from agent.transports import topics
from agent.transports.mqtt import Incoming, MqttError, PahoSession

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
WATCH_SESSION_EXPIRY_S = 3600  # MQTT 5: the broker keeps a watcher's queued events this long


class RemoteApiError(ApiError):
    """The agent refused the request; `code` is its error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class RemoteAgent:
    """The five operations of the agent on thing `thing`, through the broker in `settings`.

    `persistent` keeps this client's session at the broker across a broker restart (what a
    long `watch` wants); one-off calls use a clean session. An MQTT 5 session expires an hour
    after the client leaves; MQTT 3.1.1 has no expiry, so the broker keeps it until its own
    limit (mosquitto's persistent_client_expiration).
    """

    def __init__(self, settings: MqttConfig, thing: str, *, client_id: str | None = None, persistent: bool = False):
        self.thing = topics.check_thing_name(thing)
        self.client_id = client_id or f"neo-cli-{uuid.uuid4().hex[:12]}"
        self.v5 = settings.protocol == "5"
        self.response_topic = topics.client_response_topic(self.thing, self.client_id)
        self._session = PahoSession(
            settings, self.client_id, persistent=persistent, session_expiry_s=WATCH_SESSION_EXPIRY_S,
            on_message=self._on_message,
        )
        self._lock = threading.Lock()
        self._waiting: dict[str, dict[str, Any]] = {}  # clientToken -> {"done": Event, "answer", "error"}
        self._watchers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._last_seq: dict[str, int] = {}
        self.duplicates = 0  # events dropped as already seen (for tests and curious operators)

    # --- life cycle -----------------------------------------------------------------------
    def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> "RemoteAgent":
        settings = self._session.settings
        if not self._session.start(timeout):
            self._session.close()
            if self._session.refused:
                raise MqttError(f"the MQTT broker at {settings.host}:{settings.port} refused the connection: "
                                f"{self._session.refused}")
            raise MqttError(f"cannot reach the MQTT broker at {settings.host}:{settings.port} within {timeout:.0f} s")
        self._session.subscribe([self.response_topic] if self.v5 else topics.answer_filters(self.thing))
        return self

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "RemoteAgent":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- requests ---------------------------------------------------------------------------
    def call(self, operation: str, body: dict[str, Any] | None = None, timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        """The operation's answer body; RemoteApiError if refused, MqttError if no answer in time."""
        token = uuid.uuid4().hex
        slot: dict[str, Any] = {"done": threading.Event()}
        with self._lock:
            self._waiting[token] = slot
        payload = json.dumps({**(body or {}), topics.CLIENT_TOKEN: token}).encode()
        try:
            if self.v5:
                self._session.publish(topics.request_topic(self.thing, operation), payload,
                                      response_topic=self.response_topic, correlation_data=token.encode())
            else:
                self._session.publish(topics.request_topic(self.thing, operation), payload)
            if not slot["done"].wait(timeout):
                raise MqttError(f"no answer to {operation} from thing {self.thing} within {timeout:.0f} s "
                                "(is its agent running and connected to this broker?)")
        finally:
            with self._lock:
                self._waiting.pop(token, None)
        if slot["error"] is not None:
            raise RemoteApiError(slot["error"]["code"], slot["error"]["message"])
        return slot["answer"]

    # --- events ---------------------------------------------------------------------------
    def watch(self, job_name: str, on_event: Callable[[dict[str, Any]], None]) -> None:
        """Subscribe to a job's events (returns once the broker granted it); on_event(body) each
        new one, in paho's thread."""
        with self._lock:
            self._watchers[job_name.lower()] = on_event
        if not self._session.subscribe([topics.events_topic(self.thing, job_name)]):
            raise MqttError(f"could not subscribe to the events of {job_name}: the broker connection dropped")

    # --- paho's thread --------------------------------------------------------------------------
    def _on_message(self, message: Incoming) -> None:
        parts = message.topic.split("/")
        if len(parts) == 5 and parts[2] == "jobs" and parts[4] == "events":
            self._on_event(parts[3], message.payload)
            return
        try:
            answer, error = topics.parse_answer(message.payload)
        except ValueError:
            log.warning("mqtt: unreadable answer on %s", message.topic)
            return
        if self.v5 and message.correlation_data is not None:
            token = message.correlation_data.decode(errors="replace")
        else:
            token = json.loads(message.payload).get(topics.CLIENT_TOKEN)
        with self._lock:
            slot = self._waiting.get(token) if isinstance(token, str) else None
        if slot is None:  # another client's answer (3.1.1 answers are broadcast), or too late
            return
        slot["answer"], slot["error"] = answer, error
        slot["done"].set()

    def _on_event(self, job_name: str, payload: bytes) -> None:
        try:
            body = json.loads(payload)
            seq = int(body["seq"])
        except (ValueError, KeyError, TypeError):
            log.warning("mqtt: unreadable event for %s", job_name)
            return
        key = job_name.lower()
        with self._lock:
            callback = self._watchers.get(key)
            if seq <= self._last_seq.get(key, 0):
                self.duplicates += 1
                return
            self._last_seq[key] = seq
        if callback is not None:
            callback(body)


def settings_for(base: MqttConfig, *, broker: str | None = None, protocol: str | None = None) -> MqttConfig:
    """`base` (the mqtt section of the configuration) with --broker HOST:PORT and --mqtt-version."""
    changes: dict[str, Any] = {}
    if broker:
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit():
            host, port = broker, str(base.port)
        changes.update(host=host.strip("[]"), port=int(port))
    if protocol:
        changes["protocol"] = protocol
    settings = dataclasses.replace(base, **changes)
    settings.validate()
    return settings
