"""Bounded waits for tests: a condition that never comes fails the test instead of hanging it."""
from __future__ import annotations

import time

POLL_S = 0.05


def wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(POLL_S)
