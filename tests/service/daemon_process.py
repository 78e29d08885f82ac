"""The agent daemon as a real process, for tests that drive it from outside as a user would.

`DaemonProcess` runs `python -m agent.cli run` (or the scripted-pipeline daemon below), waits
for its `ready:` line and hands out boto3 clients for its endpoint. Every wait has a timeout,
and `kill_alarm` fails a test that hangs anyway, so a stuck daemon fails the suite instead of
blocking it (rq's tests do the same).

Run as a module, this file is that scripted daemon: `neo-agent run` with the runner tests'
scripted pipeline (through tests/runner/scripted_pipeline.py), for shutdown timings a real
compile cannot promise (a child that ignores SIGTERM, a job that sleeps).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore.config
import pytest

from agent.jobs.job import Job
from agent.jobs.store import JobStore
from tests.requests import job_request  # noqa: F401 - re-exported for the transport tests

REPO = Path(__file__).resolve().parents[2]
TEST_ALARM_S = 420  # no test here needs more than a few real compiles
READY_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 60.0
COMPILE_TIMEOUT_S = 300.0
POLL_S = 0.1
SCRIPTED_PIPELINE = "tests.runner.scripted_pipeline"
READY_LINE = re.compile(r"ready: http (http://\S+?)[;,]")

# Benchmarks as short as they can be: these tests are about the transport, not latency.
FAST_BENCH_ENV = {
    "NEO_AGENT_BENCH_MIN_ITERATIONS": "5",
    "NEO_AGENT_BENCH_MIN_SECONDS": "0.1",
    "NEO_AGENT_BENCH_WARMUP_RUNS": "1",
    "NEO_AGENT_BENCH_WARMUP_SECONDS": "0",
    "NEO_AGENT_BENCH_MAX_SECONDS": "10",
}
# A real compile that stays INPROGRESS until stopped: its benchmark stage runs for ten minutes.
# Tests that need the compile slot busy, or a job running when a signal comes, use it.
BUSY_BENCH_ENV = {"NEO_AGENT_BENCH_MIN_SECONDS": "600", "NEO_AGENT_BENCH_MAX_SECONDS": "600"}
# What boto3 and the AWS CLI sign with; on loopback the agent does not check it.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDNEOAGENTTEST",
    "AWS_SECRET_ACCESS_KEY": "neo-agent-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_PAGER": "",
}


@pytest.fixture
def kill_alarm():
    """SIGALRM after TEST_ALARM_S raises in the test, wherever it waits."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"kill alarm: the test ran past {TEST_ALARM_S} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_ALARM_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without NEO_AGENT_*/AWS_* settings or a configuration file, plus the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEO_AGENT_", "AWS_"))}
    env.update(FAST_BENCH_ENV)
    env.update(AWS_ENV)
    env["NEO_AGENT_CONFIG"] = ""  # never this machine's /etc/neo-agent/agent.toml
    env["NEO_AGENT_TUNING_DEFAULT_SECONDS"] = "0"  # tests tune only when they ask (tests/conftest.py)
    env.update(extra)
    return env


def scripted_request(name: str, script: str) -> dict:
    """A job the scripted pipeline runs by `script`, steps separated by spaces (tests/runner/scripted_pipeline.py)."""
    return job_request(name, "file:///nowhere/model.tar.gz", "file:///nowhere/out",
                       Tags=[{"Key": "test-script", "Value": script}])


def sagemaker_client(url: str, *, connections: int = 10, **overrides):
    """boto3's own SageMaker client, pointed at the agent; no retries, so errors surface at once.
    `connections`: its pool (boto3's default 10; a client shared by more threads needs more)."""
    values = dict(region_name=AWS_ENV["AWS_REGION"], aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                  aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])
    values.update(overrides)
    config = botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30,
                                    max_pool_connections=connections)
    return boto3.client("sagemaker", endpoint_url=url, config=config, **values)


def wait_status(client, name: str, statuses: set[str], timeout: float = COMPILE_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    describe: dict = {}
    while time.monotonic() < deadline:
        describe = client.describe_compilation_job(CompilationJobName=name)
        if describe["CompilationJobStatus"] in statuses:
            return describe
        time.sleep(POLL_S)
    raise AssertionError(f"{name} never reached {statuses} in {timeout} s; last: {describe.get('CompilationJobStatus')}")


def read_jobs(state_dir: Path) -> dict[str, Job]:
    """Every job on disk, read the way the agent reads them (for after the daemon exited)."""
    store = JobStore(state_dir / "jobs.sqlite3")
    try:
        return {job.name: job for job in store.query(limit=1000)}
    finally:
        store.close()


def wait_stage(state_dir: Path, name: str, stage: str, timeout: float = COMPILE_TIMEOUT_S) -> Job:
    """Wait until the running job reports `stage` (the store has it; DescribeCompilationJob does not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = read_jobs(state_dir).get(name)
        if job is not None and job.stage == stage:
            return job
        time.sleep(POLL_S)
    raise AssertionError(f"{name} never reached stage {stage} in {timeout} s")


def port_is_open(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


class DaemonProcess:
    """One daemon process with its log in a file (a file never fills up and blocks the daemon)."""

    def __init__(self, state_dir: Path, *, http: str = "127.0.0.1:0", scripted: bool = False,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.state_dir = state_dir
        self.log_path = state_dir.parent / f"{state_dir.name}-daemon-{time.monotonic_ns()}.log"
        module = [__name__] if scripted else ["agent.cli", "--log-level", "INFO", "run"]
        self.argv = [sys.executable, "-m", *module, "--http", http, "--state-dir", str(state_dir), *args]
        self.env = clean_env(**(env or {}))
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = READY_TIMEOUT_S) -> "DaemonProcess":
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = READY_LINE.search(self.log())
            if found:
                self.url = found.group(1)
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited with {self.proc.returncode} before it was ready:\n{self.log()}")
            time.sleep(POLL_S)
        self.kill()
        raise AssertionError(f"the daemon was not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = EXIT_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared in the daemon's log:\n{self.log()}")
            time.sleep(POLL_S)

    def client(self, **overrides):
        return sagemaker_client(self.url, **overrides)

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the daemon did not exit within {timeout} s:\n{self.log()}") from None

    def stop(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        """SIGTERM and wait: the daemon's orderly shutdown."""
        if self.proc.poll() is None:
            self.send(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _scripted_main() -> int:
    """`neo-agent run` with the scripted pipeline and short grace periods."""
    from agent import logs
    from agent.config import AgentConfig
    from agent.service.daemon import Daemon

    parser = argparse.ArgumentParser()
    parser.add_argument("--http", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--stop-grace-s", type=float, default=2.0)
    args = parser.parse_args()
    logs.setup("INFO")
    config = AgentConfig.load(state_dir=args.state_dir, http=args.http, stop_grace_s=args.stop_grace_s,
                              deadline_grace_s=1.0, pipeline_module=SCRIPTED_PIPELINE)
    return Daemon(config).run()


if __name__ == "__main__":
    sys.exit(_scripted_main())
