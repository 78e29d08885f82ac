"""The one-line service status that `systemctl status neo-agent` shows, kept from job events.

    idle, 0 queued
    job resnet in stage compile (45%), 2 queued
    job a in stage verify (50%), job b stopping in stage fetch (0%), 0 queued

The view is built from the store's event stream (a change is on disk before its event), seeded
once from the store before the runner starts. Sending is rate-limited: progress events can
come many times a second, and systemd's status needs no more than one line a second. A line
held back by the limit goes out from `flush`, which the daemon's main loop calls.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from agent.jobs.events import Event
from agent.jobs.job import Job, Status

MIN_INTERVAL_S = 1.0
QUEUED = Status.STARTING.value
RUNNING = (Status.INPROGRESS.value, Status.STOPPING.value)


class ServiceStatus:
    """Jobs not yet ended, by name, and the STATUS= line they make; `send` is Notifier.status."""

    def __init__(self, send: Callable[[str], object], min_interval_s: float = MIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.send = send
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._jobs: dict[str, Event] = {}  # insertion order is the order jobs were seen
        self._lock = threading.Lock()
        self._sent = ""
        self._sent_at = float("-inf")
        self._frozen = False

    def seed(self, jobs: list[Job]) -> None:
        """The jobs the store holds unfinished, before any event about them."""
        with self._lock:
            for job in jobs:
                self._jobs.setdefault(job.name, Event("status", job.name, job.status.value, job.stage, job.percent))

    def on_event(self, event: Event) -> None:
        """The EventBus subscriber: update the view, send the line if the rate allows."""
        with self._lock:
            if event.kind == "deleted" or event.status not in (QUEUED, *RUNNING):
                self._jobs.pop(event.job_name, None)
            else:
                self._jobs[event.job_name] = event
            self._send_if_due()

    def flush(self) -> None:
        """Send a line the rate limit held back, once its time has come."""
        with self._lock:
            self._send_if_due()

    def take(self) -> str:
        """The line now, counted as sent: for a message that carries it itself (READY=1)."""
        with self._lock:
            self._sent, self._sent_at = self._line(), self.clock()
            return self._sent

    def freeze(self) -> None:
        """Stop following jobs: the shutdown's own lines take over."""
        with self._lock:
            self._frozen = True

    def line(self) -> str:
        with self._lock:
            return self._line()

    def _line(self) -> str:
        running = [e for e in self._jobs.values() if e.status in RUNNING]
        queued = sum(1 for e in self._jobs.values() if e.status == QUEUED)
        parts = [_describe(e) for e in running] or ["idle"]
        return ", ".join(parts + [f"{queued} queued"])

    def _send_if_due(self) -> None:
        if self._frozen:
            return
        text = self._line()
        now = self.clock()
        if text == self._sent or now - self._sent_at < self.min_interval_s:
            return
        self._sent, self._sent_at = text, now
        self.send(text)


def _describe(event: Event) -> str:
    verb = "stopping in stage" if event.status == Status.STOPPING.value else "in stage"
    return f"job {event.job_name} {verb} {event.stage or 'fetch'} ({event.percent:.0f}%)"
