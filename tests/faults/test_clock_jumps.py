"""The wall clock jumps while a job runs: NTP setting a Raspberry Pi's clock (it has no RTC) moves
it by hours or years after boot, and an operator may set it back.

What the user sees: a jump forward does not kill a running job for MaxRuntimeInSeconds, and a
jump back does not let a stuck job run past it; the deadline is kept on the monotonic clock
(agent/runner/process.py), and the compile child's own alarm counts elapsed time. The
timestamps in the job's record are wall-clock times, so they show the jump. The agent sees a
shifted clock here (the Runner's clock), as it would see the system's; setting the machine's
clock needs privileges a test does not have.
"""
from __future__ import annotations

import time

import pytest

from agent.jobs.job import Status
from agent.jobs.store import JobStore
from agent.runner.runner import Runner
from tests.runner.conftest import make_config, scripted_job, submit, wait_for, wait_terminal

pytestmark = pytest.mark.faults
DAY = 86400.0


@pytest.fixture
def shifted(tmp_path):
    """A runner whose wall clock the test moves: (store, runner, shift), shift[0] in seconds."""
    shift = [0.0]
    config = make_config(tmp_path, concurrency=1, deadline_grace_s=1.0)
    store = JobStore(config.db_path)
    runner = Runner(store, config, clock=lambda: time.time() + shift[0])
    runner.start()
    yield store, runner, shift
    runner.shutdown(timeout=10)
    store.close()


def test_a_jump_forward_does_not_kill_a_running_job(shifted):
    store, runner, shift = shifted
    submit(store, runner, scripted_job("job", "stage=compile sleep=3", MaxRuntimeInSeconds=60))
    wait_for(store, "job", lambda j: j.status == Status.INPROGRESS and j.pid is not None)
    shift[0] = DAY   # NTP corrects the clock by a day while the job compiles
    job = wait_terminal(store, "job", timeout=30)
    assert job.status == Status.COMPLETED, job.failure_reason
    assert job.end_time - job.start_time > DAY - 60   # the record's times are wall-clock times


def test_a_jump_back_does_not_let_a_stuck_job_outlive_its_runtime(shifted):
    store, runner, shift = shifted
    # The child ignores its own alarm (stuck in native code), so only the agent's kill can end it.
    submit(store, runner, scripted_job("stuck", "stage=compile ignore-alarm sleep=60", MaxRuntimeInSeconds=2))
    wait_for(store, "stuck", lambda j: j.status == Status.INPROGRESS and j.pid is not None)
    started = time.monotonic()
    shift[0] = -DAY  # someone sets the clock back a day
    job = wait_terminal(store, "stuck", timeout=30)
    assert job.status == Status.FAILED and "MaxRuntimeInSeconds" in job.failure_reason, job.failure_reason
    assert time.monotonic() - started < 10   # killed at its deadline plus the grace, not a day later
