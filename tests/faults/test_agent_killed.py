"""The agent SIGKILLed (a power cut, the OOM killer) while a job is in each stage, then started
again on the same state directory, as systemd would.

What the user sees, per stage: the job is FAILED with `ServerError: AgentRestart` naming the
stage it was in (the compile is not resumed: nothing a half-run child left can be trusted);
the compile child, which lives on in its own session when the agent dies, is killed by the
restarted agent, so no orphan keeps the CPU or the memory; the jobs that were waiting run and
complete; nothing is COMPLETED without its artifact in S3. The stages are held open by the
runner tests' scripted pipeline (tests/runner/scripted_pipeline.py), so each kill lands in the
stage it names; the upload case uploads for real, to an S3 server that is down at the time.
"""
from __future__ import annotations

import time

import boto3
import psutil
import pytest

from tests.service.daemon_process import DaemonProcess, kill_alarm, read_jobs, scripted_request, wait_stage, wait_status  # noqa: F401

pytestmark = pytest.mark.faults

STAGES = ["fetch", "prepare", "compile", "verify", "benchmark", "package"]


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def in_stage(state, name: str, stage: str, timeout: float = 60.0):
    """The job once its child runs and reports `stage` (a queued job's record says fetch already)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = wait_stage(state, name, stage, timeout=timeout)
        if job.pid is not None and job.status.value == "INPROGRESS":
            return job
        time.sleep(0.05)
    raise AssertionError(f"{name} never ran in stage {stage}")


def kill_in_stage(state, stage: str, script: str) -> int:
    """Start the daemon, submit `busy` (held in `stage` by `script`) and `waiting`, SIGKILL the daemon
    once `busy` is in `stage`; returns the compile child's pid. The child is in
    its own session, so it outlives the agent until it next writes to its dead parent (EPIPE) or
    the restarted agent kills it."""
    daemon = DaemonProcess(state, scripted=True, env={"NEO_AGENT_CONCURRENCY": "1"}).start()
    try:
        client = daemon.client()
        client.create_compilation_job(**scripted_request("busy", script))
        client.create_compilation_job(**scripted_request("waiting", "stage=compile"))
        child = in_stage(state, "busy", stage).pid
        assert child is not None
        daemon.kill()   # SIGKILL: no shutdown code runs
    finally:
        daemon.kill()
    return child


def restart_and_check(state, stage: str, child: int) -> None:
    again = DaemonProcess(state, scripted=True).start()
    try:
        client = again.client()
        busy = wait_status(client, "busy", {"FAILED", "COMPLETED", "STOPPED"}, timeout=30)
        assert busy["CompilationJobStatus"] == "FAILED"
        assert busy["FailureReason"].startswith("ServerError: AgentRestart:"), busy["FailureReason"]
        assert f"in stage {stage}" in busy["FailureReason"]
        assert gone(child), f"the compile child {child} of the killed agent is still running"
        waiting = wait_status(client, "waiting", {"FAILED", "COMPLETED", "STOPPED"}, timeout=60)
        assert waiting["CompilationJobStatus"] == "COMPLETED", waiting.get("FailureReason")
    finally:
        again.stop()


@pytest.mark.parametrize("stage", STAGES)
def test_killed_in_each_stage_the_job_fails_as_agent_restart_and_the_queue_runs_on(tmp_path, stage, kill_alarm):
    state = tmp_path / "state"
    child = kill_in_stage(state, stage, f"stage={stage} sleep=120")
    restart_and_check(state, stage, child)
    notes = read_jobs(state)["busy"].notes
    assert any(f"agent restarted during stage {stage}" in note for note in notes), notes


def test_killed_while_uploading_to_an_unreachable_s3_nothing_is_completed(tmp_path, own_s3, kill_alarm):
    """The upload waits out an S3 outage; the agent dies meanwhile. After the restart the job is
    FAILED, and S3, reachable again with all it held, has nothing under its output location."""
    from tests.restartable_s3 import BUCKET

    own_s3.cut()   # the relay refuses connections; the server and what it holds stay
    state = tmp_path / "state"
    request = scripted_request("busy", "stage=compile publish=1")
    request["OutputConfig"]["S3OutputLocation"] = f"s3://{BUCKET}/compiled/"
    daemon = DaemonProcess(state, scripted=True, env={"NEO_AGENT_CONCURRENCY": "1", **own_s3.env()}).start()
    try:
        daemon.client().create_compilation_job(**request)
        child = in_stage(state, "busy", "upload").pid
        deadline = time.monotonic() + 30   # until the upload has met the outage and says so
        while "unreachable" not in (read_jobs(state)["busy"].stage_message or "").lower() and time.monotonic() < deadline:
            time.sleep(0.1)
        daemon.kill()
    finally:
        daemon.kill()
    own_s3.heal()
    again = DaemonProcess(state, scripted=True, env=own_s3.env()).start()
    try:
        busy = wait_status(again.client(), "busy", {"FAILED", "COMPLETED", "STOPPED"}, timeout=30)
        assert busy["CompilationJobStatus"] == "FAILED" and "in stage upload" in busy["FailureReason"]
        assert gone(child)
        s3 = boto3.client("s3", endpoint_url=own_s3.endpoint_url)
        assert s3.list_objects_v2(Bucket=BUCKET, Prefix="compiled/").get("KeyCount", 0) == 0
    finally:
        again.stop()
