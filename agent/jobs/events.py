"""The event stream transports subscribe to.

Every status change and every stage-progress update is published here, from one place: the
store, right after the change is committed. So a subscriber never sees an event for a change
that is not on disk.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Event:
    """kind is "status" (the status changed), "progress" (stage or percent moved) or "deleted"."""

    kind: str
    job_name: str
    status: str
    stage: str = ""
    percent: float = 0.0
    message: str = ""
    failure_reason: str = ""
    metrics: dict[str, Any] | None = None
    channel: str = ""
    time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "")}


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Register `callback`; returns a function that unsubscribes it."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def publish(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:  # a broken subscriber must not break the job
                log.exception("event subscriber %r failed on %s", callback, event.kind)
