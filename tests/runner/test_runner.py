"""The runner with real child processes and real signals, on a scripted pipeline."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from agent.jobs.job import Status
from agent.jobs.store import JobStore
from agent.runner.runner import Runner
from tests.runner.conftest import make_config, scripted_job, submit, wait_for, wait_terminal


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_success_records_artifact_metrics_and_times(harness):
    store, runner = harness()
    submit(store, runner, scripted_job("ok", "stage=compile;sleep=0.2"))
    job = wait_terminal(store, "ok")
    assert job.status == Status.COMPLETED
    assert job.artifact_uri.endswith("out.tar.gz") and job.artifact_digest == "ab12"
    assert job.metrics == {"scripted": True}
    assert job.creation_time <= job.start_time <= job.end_time
    assert job.pid is None and job.failure_reason == ""


def test_pipeline_failure_becomes_failure_reason(harness):
    store, runner = harness()
    submit(store, runner, scripted_job("bad", "fail=no_onnx_file"))
    job = wait_terminal(store, "bad")
    assert job.status == Status.FAILED
    assert job.failure_reason == "ClientError: InputConfiguration: no_onnx_file"


def test_child_that_dies_without_a_word_fails_the_job(harness):
    store, runner = harness()
    submit(store, runner, scripted_job("crash", "stage=compile;crash"))
    job = wait_terminal(store, "crash")
    assert job.status == Status.FAILED
    assert job.failure_reason.startswith("ServerError:") and "exit code 3" in job.failure_reason
    assert "stage compile" in job.failure_reason


def test_derived_input_config_is_recorded(harness):
    store, runner = harness()
    submit(store, runner, scripted_job("derive", 'derive={"input":[1,3,8,8]}'))
    job = wait_terminal(store, "derive")
    assert job.derived_input_config == '{"input":[1,3,8,8]}'


def test_max_runtime_child_deadline(harness):
    store, runner = harness()
    submit(store, runner, scripted_job("slow", "stage=compile;sleep=60", MaxRuntimeInSeconds=1))
    start = time.monotonic()
    job = wait_terminal(store, "slow", timeout=20)
    assert job.status == Status.FAILED
    assert job.failure_reason.startswith("ClientError: TimeOut:")
    assert "MaxRuntimeInSeconds=1" in job.failure_reason and "stage compile" in job.failure_reason
    assert time.monotonic() - start < 10


def test_max_runtime_parent_kills_a_stuck_child(harness):
    store, runner = harness(deadline_grace_s=1.0)
    submit(store, runner, scripted_job("stuck", "ignore-alarm;stage=compile;sleep=60", MaxRuntimeInSeconds=1))
    pid = wait_for(store, "stuck", lambda j: j.pid is not None).pid
    job = wait_terminal(store, "stuck", timeout=20)
    assert job.status == Status.FAILED and "TimeOut" in job.failure_reason
    assert gone(pid)


def test_stop_in_progress_sends_sigterm_and_ends_stopped(harness):
    store, runner = harness()
    submit(store, runner, scripted_job("stopme", "stage=compile;sleep=60"))
    pid = wait_for(store, "stopme", lambda j: j.stage == "compile").pid
    runner.stop("stopme")
    assert store.get("stopme").status in (Status.STOPPING, Status.STOPPED)
    job = wait_terminal(store, "stopme", timeout=10)
    assert job.status == Status.STOPPED and job.end_time is not None and job.failure_reason == ""
    assert gone(pid)


def test_stop_escalates_to_sigkill_after_grace(harness):
    store, runner = harness(stop_grace_s=1.0)
    submit(store, runner, scripted_job("stubborn", "ignore-term;stage=compile;sleep=60"))
    pid = wait_for(store, "stubborn", lambda j: j.stage == "compile").pid
    start = time.monotonic()
    runner.stop("stubborn")
    job = wait_terminal(store, "stubborn", timeout=15)
    assert job.status == Status.STOPPED
    assert 0.9 <= time.monotonic() - start < 8
    assert gone(pid)


def test_stop_queued_job_and_fifo_order(harness):
    store, runner = harness(concurrency=1)
    submit(store, runner, scripted_job("first", "sleep=1.5"))
    submit(store, runner, scripted_job("second", "sleep=0.1"))
    submit(store, runner, scripted_job("third", "sleep=0.1"))
    wait_for(store, "first", lambda j: j.status == Status.INPROGRESS)
    runner.stop("second")
    assert store.get("second").status == Status.STOPPED
    third = wait_terminal(store, "third")
    first = store.get("first")
    assert first.status == third.status == Status.COMPLETED
    assert third.start_time >= first.end_time  # one at a time, in order


@pytest.mark.faults
def test_memory_limit_kills_group_and_agent_lives_on(harness):
    store, runner = harness(memory_limit_mb=250)
    submit(store, runner, scripted_job("hog", "stage=compile;alloc=400;sleep=30"))
    job = wait_terminal(store, "hog", timeout=30)
    assert job.status == Status.FAILED
    assert job.failure_reason.startswith("ClientError: ModelSizeTooBig:")
    assert "250 MiB" in job.failure_reason
    submit(store, runner, scripted_job("after", "sleep=0.1"))
    assert wait_terminal(store, "after").status == Status.COMPLETED


@pytest.mark.faults
def test_memory_backstop_refuses_a_burst(harness):
    """An allocation far past the limit is refused by RLIMIT_DATA before the watch can poll."""
    store, runner = harness(memory_limit_mb=100)
    submit(store, runner, scripted_job("burst", "alloc=4000"))
    job = wait_terminal(store, "burst", timeout=30)
    assert job.status == Status.FAILED and "ModelSizeTooBig" in job.failure_reason


def test_max_pending_fails_a_job_that_waited_too_long(tmp_path):
    shift = [0.0]
    config = make_config(tmp_path, concurrency=1)
    store = JobStore(config.db_path)
    runner = Runner(store, config, clock=lambda: time.time() + shift[0])
    runner.start()
    try:
        submit(store, runner, scripted_job("blocker", "sleep=30", MaxRuntimeInSeconds=86400))
        submit(store, runner, scripted_job("waiter", "sleep=0.1", MaxRuntimeInSeconds=60, MaxPendingTimeInSeconds=1800))
        wait_for(store, "blocker", lambda j: j.status == Status.INPROGRESS)
        time.sleep(1.2)
        assert store.get("waiter").status == Status.STARTING
        shift[0] = 1801.0
        job = wait_terminal(store, "waiter", timeout=10)
        assert job.status == Status.FAILED
        assert job.failure_reason.startswith("ClientError: TimeOut:") and "MaxPendingTimeInSeconds=1800" in job.failure_reason
        runner.stop("blocker")
    finally:
        runner.shutdown(timeout=10)
        store.close()


AGENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.runner.conftest import make_config, scripted_job, submit
    from pathlib import Path
    from agent.jobs.store import JobStore
    from agent.runner.runner import Runner
    config = make_config(Path({tmp!r}), concurrency=1)
    store = JobStore(config.db_path)
    runner = Runner(store, config)
    runner.start()
    submit(store, runner, scripted_job("running", "stage=compile;sleep=120"))
    submit(store, runner, scripted_job("queued-a", "sleep=0.1"))
    submit(store, runner, scripted_job("queued-b", "sleep=0.1"))
    print("ready", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.faults
def test_agent_killed_mid_job_then_restarted(tmp_path):
    """SIGKILL the agent while one job runs and two wait: after restart nothing is lost."""
    root = os.getcwd()
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT_SCRIPT.format(root=root, tmp=str(tmp_path))],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        config = make_config(tmp_path, concurrency=1)
        store = JobStore(config.db_path)
        job = wait_for(store, "running", lambda j: j.stage == "compile" and j.pid is not None)
        orphan = job.pid
        proc.kill()  # the agent dies at once; its compile child, in its own session, is told to end
        proc.wait()  # (PR_SET_PDEATHSIG: agent/runner/child.py) and unwinds as on Stop
        deadline = time.monotonic() + 10
        while not gone(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(orphan), "the compile child outlived its agent"
        runner = Runner(store, config)
        runner.start()
        try:
            failed = store.get("running")
            assert failed.status == Status.FAILED
            assert failed.failure_reason.startswith("ServerError: AgentRestart:") and "stage compile" in failed.failure_reason
            assert any("agent restarted during stage compile; its compile process was gone" in note
                       for note in failed.notes), failed.notes
            for name in ("queued-a", "queued-b"):
                job = wait_terminal(store, name)
                assert job.status == Status.COMPLETED
                assert "queued again after an agent restart" in job.notes
        finally:
            runner.shutdown(timeout=10)
            store.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_shutdown_fails_running_job_cleanly_and_keeps_queue(tmp_path):
    config = make_config(tmp_path, concurrency=1)
    store = JobStore(config.db_path)
    runner = Runner(store, config)
    runner.start()
    submit(store, runner, scripted_job("busy", "stage=compile;sleep=60"))
    submit(store, runner, scripted_job("later", "sleep=0.1"))
    wait_for(store, "busy", lambda j: j.stage == "compile")
    runner.shutdown(timeout=15)
    runner.shutdown(timeout=1)  # twice is fine
    busy = store.get("busy")
    assert busy.status == Status.FAILED and "AgentShutdown" in busy.failure_reason
    assert store.get("later").status == Status.STARTING
    runner2 = Runner(store, config)
    runner2.start()
    try:
        assert wait_terminal(store, "later").status == Status.COMPLETED
    finally:
        runner2.shutdown(timeout=10)
        store.close()


def test_shutdown_with_a_child_that_ignores_sigterm_still_says_agent_shutdown(tmp_path):
    config = make_config(tmp_path, stop_grace_s=0.5)
    store = JobStore(config.db_path)
    runner = Runner(store, config)
    runner.start()
    try:
        submit(store, runner, scripted_job("deaf", "ignore-term stage=compile sleep=60"))
        pid = wait_for(store, "deaf", lambda j: j.stage == "compile").pid
        runner.shutdown(timeout=15)
        job = store.get("deaf")
        assert job.status == Status.FAILED and job.failure_reason.startswith("ServerError: AgentShutdown:")
        assert gone(pid)
    finally:
        store.close()
