"""Waiting out a storage outage, bounded by the job's own deadline.

    patience = Patience(deadline=job_deadline, on_wait=report)   # or Patience.for_seconds(300)
    patience.call("uploading model-ml_c5.tar.gz", lambda: client.put_object(...))

A transfer that fails with ServerError("StorageUnreachable") (no connection, a timeout, a 5xx
that outlasted botocore's own three attempts) is tried again after a backoff of 1, 2, 4, ... up
to 30 seconds, with jitter, for as long as the next try can start before `deadline` less a
margin. The margin leaves the job time to say why it failed before the compile child's own
alarm (MaxRuntimeInSeconds) ends it with a plain TimeOut. Every wait is announced through
`on_wait`, so a job waiting for S3 says so in its stage message, and the final failure says how
long S3 was unreachable and what the last error was.

Any other failure (a missing bucket, AccessDenied, a bad KMS key) is not an outage: waiting
cannot fix it, so it is raised at once.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import Callable, TypeVar

from agent.errors import JobFailure, ServerError

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
DEADLINE_MARGIN_S = 5.0  # stop retrying this long before the deadline, to fail with a reason
DEFAULT_PATIENCE_S = 300.0  # a transfer outside a job (neo-agent compile) waits at most this long
TRANSIENT = ("StorageUnreachable",)


def is_transient(failure: JobFailure) -> bool:
    return isinstance(failure, ServerError) and failure.keyword in TRANSIENT


@dataclasses.dataclass
class Patience:
    """How long transfers may keep retrying: until `deadline` (time.time()) less the margin."""

    deadline: float
    on_wait: Callable[[str], None] | None = None
    margin_s: float = DEADLINE_MARGIN_S
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def for_seconds(cls, seconds: float = DEFAULT_PATIENCE_S, **kwargs) -> "Patience":
        return cls(deadline=time.time() + seconds, **kwargs)

    def call(self, what: str, operation: Callable[[], T]) -> T:
        """`operation()`, tried again through outages; `what` names it in messages."""
        first_failure: float | None = None
        attempt = 0
        backoff = FIRST_BACKOFF_S
        while True:
            attempt += 1
            try:
                return operation()
            except JobFailure as failure:
                if not is_transient(failure):
                    raise
                now = time.time()
                first_failure = first_failure if first_failure is not None else now
                delay = backoff * random.uniform(0.5, 1.0)
                if now + delay > self.deadline - self.margin_s:
                    raise ServerError(
                        "StorageUnreachable",
                        f"{what}: storage stayed unreachable for {now - first_failure:.0f} s over "
                        f"{attempt} attempts, until the job's time ran out; last error: {failure.detail}",
                    ) from failure
                message = (f"{what}: storage unreachable, attempt {attempt} failed; trying again in "
                           f"{delay:.0f} s ({failure.detail})")
                log.warning("%s", message)
                if self.on_wait is not None:
                    self.on_wait(message)
                self.sleep(delay)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
