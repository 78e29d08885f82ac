"""The process that reads the model (agent.runner.offline) killed, or stopped, mid-stage.

A crash in native code (a parser, LLVM, a compiled kernel) ends that process by a signal: the
job fails with a ServerError that names the signal and the stage, the compile child and the
agent go on, and nothing is left running. A Stop while it tunes ends it as StopCompilationJob
always does: STOPPED, no process left.
"""
from __future__ import annotations

import os
import signal
import time

import boto3
import psutil
import pytest

from agent.config import AgentConfig
from agent.samples import make_sample_archive
from agent.service.agent import Agent
from tests.requests import job_request as request
from tests.test_agent import FAST_BENCH, wait_terminal

pytestmark = pytest.mark.faults
TUNING_OPTIONS = '{"tuning_seconds": 120}'  # keeps the offline process in stage compile


def offline_process(timeout: float = 120) -> psutil.Process:
    """The offline process of this test's agent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in psutil.Process().children(recursive=True):
            try:
                if "agent.runner.offline" in " ".join(proc.cmdline()):
                    return proc
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    raise AssertionError("no offline process appeared")


def leftovers() -> list[str]:
    names = []
    for proc in psutil.Process().children(recursive=True):
        try:
            line = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "agent.runner" in line or "agent.bench" in line or "popen_worker" in line:
            names.append(line)
    return names


@pytest.fixture
def tuning_job(tmp_path, s3_bucket):
    s3 = boto3.client("s3")
    s3.upload_file(str(make_sample_archive(tmp_path)), s3_bucket, "in/model.tar.gz")
    with Agent(AgentConfig(state_dir=tmp_path / "state", bench=FAST_BENCH)) as agent:
        body = request("offline", f"s3://{s3_bucket}/in/model.tar.gz", f"s3://{s3_bucket}/out")
        body["OutputConfig"]["CompilerOptions"] = TUNING_OPTIONS
        agent.api.call("CreateCompilationJob", body)
        yield agent, s3_bucket, offline_process()


def test_a_crash_in_the_stages_that_read_the_model_fails_the_job_and_the_agent_goes_on(tuning_job):
    agent, bucket, proc = tuning_job
    time.sleep(3)  # into the compile stage's tuning
    os.kill(proc.pid, signal.SIGKILL)
    describe = wait_terminal(agent, "offline", timeout=60)
    assert describe["CompilationJobStatus"] == "FAILED"
    assert describe["FailureReason"].startswith(
        "ServerError: the process that reads the model (prepare to benchmark) ended with signal SIGKILL in stage "), \
        describe["FailureReason"]
    deadline = time.monotonic() + 15
    while leftovers() and time.monotonic() < deadline:  # the agent ends the child's group after it
        time.sleep(0.2)
    assert not leftovers()
    # The agent goes on: the next job compiles.
    agent.api.call("CreateCompilationJob", request("after", f"s3://{bucket}/in/model.tar.gz", f"s3://{bucket}/out2"))
    assert wait_terminal(agent, "after")["CompilationJobStatus"] == "COMPLETED"


def test_a_stop_while_the_model_is_tuned_ends_every_process(tuning_job):
    agent, _, proc = tuning_job
    time.sleep(3)
    agent.api.call("StopCompilationJob", {"CompilationJobName": "offline"})
    assert wait_terminal(agent, "offline", timeout=60)["CompilationJobStatus"] == "STOPPED"
    assert not psutil.pid_exists(proc.pid) or proc.status() == psutil.STATUS_ZOMBIE
    deadline = time.monotonic() + 15
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leftovers()
