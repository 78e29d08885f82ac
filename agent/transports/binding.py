"""The API on MQTT, independent of the MQTT library: requests in, answers and job events out.

`MqttApiBinding` is what every MQTT-based transport shares. The transport owns the
connection (paho for plain MQTT, awsiotsdk for AWS IoT Core) and drives the binding:

    binding = MqttApiBinding(api, events, thing, publish, outbox=Outbox(path))
    subscribe to binding.request_filters(), QoS 1
    on each request message:      binding.handle_request(topic, payload, response_topic, correlation_data)
    on (re)connect / disconnect:  binding.on_connected() / binding.on_disconnected()
    when the broker acknowledges an Outgoing with an outbox_id:  binding.delivered(outbox_id)
    when such a publish is lost:  binding.delivery_failed(outbox_id)  (re-sent at the next connect)
    before disconnecting:         binding.flush(timeout)

`publish(Outgoing)` must publish with QoS 1 and must not block on the network.

Topics and payloads are agent/transports/topics.py's. The binding answers only requests on
its own thing's topics, and only for its own channel's jobs does it publish events (the
jobs this transport brought in; see agent/transports/base.py). It subscribes to the events
when it is made, so status changes made while the transport is offline or stopped (a restart's
recovery, a shutdown) still go into the outbox and out at the next connect.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Iterable

from agent.api.service import CompilationService
from agent.config import ROLE_ARN_ACCOUNT
from agent.errors import AccessDeniedException, ApiError
from agent.jobs.events import Event, EventBus
from agent.transports import topics
from agent.transports.outbox import Entry, Outbox

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class Outgoing:
    """One message for the transport to publish (QoS 1).

    `correlation_data` goes into the MQTT 5 Correlation Data property. With `outbox_id`, the
    transport reports the broker's acknowledgement through `MqttApiBinding.delivered`.
    """

    topic: str
    payload: bytes
    correlation_data: bytes | None = None
    outbox_id: int | None = None


PublishFn = Callable[[Outgoing], None]


class AccessPolicy:
    """Which RoleArns a CreateCompilationJob may name on this device.

    Both lists are optional; a non-empty list must contain the role's account (allowed
    accounts) or the exact ARN (allowed role ARNs). A refused request is answered with
    AccessDeniedException, AWS's code for a caller that lacks permission, and nothing is
    recorded. The other operations name no role and are allowed to whoever may publish on
    the thing's request topics (the broker's ACL or IoT policy decides that).
    """

    def __init__(self, allowed_accounts: Iterable[str] = (), allowed_role_arns: Iterable[str] = ()):
        self.allowed_accounts = frozenset(allowed_accounts)
        self.allowed_role_arns = frozenset(allowed_role_arns)

    def check(self, operation: str, body: dict[str, Any]) -> None:
        if operation != "CreateCompilationJob" or not (self.allowed_accounts or self.allowed_role_arns):
            return
        role = body.get("RoleArn")
        match = ROLE_ARN_ACCOUNT.match(role) if isinstance(role, str) else None
        if match is None:
            raise AccessDeniedException(
                f"RoleArn {role!r} is not an IAM role ARN; this device only accepts allowed roles."
            )
        if self.allowed_accounts and match.group(1) not in self.allowed_accounts:
            raise AccessDeniedException(
                f"RoleArn {role} belongs to account {match.group(1)}, which is not allowed on this device."
            )
        if self.allowed_role_arns and role not in self.allowed_role_arns:
            raise AccessDeniedException(f"RoleArn {role} is not allowed on this device.")


class MqttApiBinding:
    def __init__(
        self,
        api: CompilationService,
        events: EventBus,
        thing: str,
        publish: PublishFn,
        *,
        outbox: Outbox,
        max_payload_bytes: int,
        access: AccessPolicy | None = None,
        channel: str | None = None,
    ):
        self.api = api
        self.thing = topics.check_thing_name(thing)
        self.publish = publish
        self.outbox = outbox
        self.max_payload_bytes = max_payload_bytes
        self.access = access or AccessPolicy()
        self.channel = api.channel if channel is None else channel
        # Held while an event gets its seq and is handed to `publish`, so each job's events
        # leave in seq order. Never taken on the acknowledgement path (delivered), which
        # paho calls while holding its own locks.
        self._lock = threading.Lock()
        self._online = False
        self._in_flight: set[int] = set()
        self._flight = threading.Condition()
        self._unsubscribe = events.subscribe(self._on_event)

    def request_filters(self) -> list[str]:
        return topics.request_topics(self.thing)

    def close(self) -> None:
        """Stop listening to job events (the outbox is the caller's to close)."""
        self._unsubscribe()

    # --- requests -------------------------------------------------------------------------
    def handle_request(self, topic: str, payload: bytes, response_topic: str | None = None,
                       correlation_data: bytes | None = None) -> None:
        """Answer one request message; never raises (a bad request gets a rejected answer)."""
        parsed = topics.parse_request_topic(topic)
        if parsed is None or parsed[0] != self.thing:
            log.warning("mqtt: ignored a message on %r, not one of thing %s's request topics", topic, self.thing)
            return
        operation = parsed[1]
        if response_topic is not None and not topics.is_safe_response_topic(response_topic):
            log.warning("mqtt: ignored %s: Response Topic %r is not one the agent answers on", operation, response_topic)
            return
        token = None
        try:
            body, token = topics.parse_request(payload, self.max_payload_bytes)
            self.access.check(operation, body)
            answer, error = self.api.call(operation, body), None
        except ApiError as exc:
            answer, error = None, exc
        except Exception:  # a bug: the requester still hears back, in AWS's words
            log.exception("mqtt: %s failed", operation)
            answer, error = None, ApiError("The request failed on the device; see the agent's log.")
        log.info("mqtt: %s %s%s", operation, "accepted" if error is None else "rejected",
                 "" if error is None else f": {error.code}: {error.message}")
        if response_topic is not None:
            out_topic = response_topic
        elif error is None:
            out_topic = topics.accepted_topic(self.thing, operation)
        else:
            out_topic = topics.rejected_topic(self.thing, operation)
        data = topics.accepted_payload(answer, token) if error is None else topics.rejected_payload(error, token)
        self._send(Outgoing(out_topic, data, correlation_data=correlation_data))

    # --- connection state -------------------------------------------------------------------
    def on_connected(self) -> None:
        """Online again: send every pending outbox entry the transport does not already hold."""
        with self._lock:
            self._online = True
            for entry in self.outbox.pending():
                if entry.id not in self._in_flight:
                    self._deliver(entry)

    def on_disconnected(self) -> None:
        with self._lock:
            self._online = False

    def delivered(self, outbox_id: int) -> None:
        """The broker acknowledged an outbox entry."""
        self.outbox.ack(outbox_id)
        with self._flight:
            self._in_flight.discard(outbox_id)
            self._flight.notify_all()

    def delivery_failed(self, outbox_id: int) -> None:
        """The transport dropped an entry; the next on_connected sends it again."""
        with self._flight:
            self._in_flight.discard(outbox_id)
            self._flight.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until no entry is pending (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while self.outbox.pending():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._flight:
                self._flight.wait(min(remaining, 0.2))
        return True

    # --- events -----------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if event.channel != self.channel:
            return
        topic = topics.events_topic(self.thing, event.job_name)
        with self._lock:
            if event.kind == "progress":
                # Best effort: a backlog of stale percentages helps nobody after a reconnect.
                if self._online:
                    seq = self.outbox.next_seq(event.job_name)
                    self._send(Outgoing(topic, topics.event_payload(event, seq)))
                return
            summary = self._summary(event) if event.kind == "status" and event.status == "COMPLETED" else None
            key = "deleted" if event.kind == "deleted" else event.status
            entry = self.outbox.record(event.job_name, key, topic, lambda seq: topics.event_payload(event, seq, summary))
            if event.kind == "deleted":
                self.outbox.new_generation(event.job_name)
            if entry is not None and self._online:
                self._deliver(entry)

    def _summary(self, event: Event) -> dict[str, Any]:
        """The metrics summary; the artifact's URI and digest come from the API's record."""
        try:
            describe = self.api.call("DescribeCompilationJob", {"CompilationJobName": event.job_name})
        except ApiError:  # deleted in the meantime: the metrics alone still help
            describe = {}
        return topics.metrics_summary(
            event.metrics,
            artifact_uri=describe.get("ModelArtifacts", {}).get("S3ModelArtifacts", ""),
            artifact_digest=describe.get("ModelDigests", {}).get("ArtifactDigest", ""),
        )

    def _deliver(self, entry: Entry) -> None:
        with self._flight:
            self._in_flight.add(entry.id)
        if not self._send(Outgoing(entry.topic, entry.payload, outbox_id=entry.id)):
            self.delivery_failed(entry.id)

    def _send(self, message: Outgoing) -> bool:
        try:
            self.publish(message)
            return True
        except Exception:  # the transport's error; the outbox (if any) tries again later
            log.exception("mqtt: could not publish to %s", message.topic)
            return False
