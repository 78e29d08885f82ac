"""`neo-agent run`: start, ready line, two-stage shutdown on real signals, restart, configuration.

The daemon runs as a real process and gets real SIGTERM/SIGINT; every wait has a timeout and
the kill alarm fails a test that hangs.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import botocore.exceptions
import psutil
import pytest

from agent.cli import build_parser
from agent.config import AgentConfig, parse_credentials
from agent.errors import ApiError, ConfigError
from tests.mosquitto import mosquitto  # noqa: F401 - the fixture, used by name
from agent.jobs.job import Status
from agent.samples import make_sample_archive
from agent.service.daemon import Daemon
from tests.service.daemon_process import (
    BUSY_BENCH_ENV,
    REPO,
    DaemonProcess,
    clean_env,
    job_request,
    kill_alarm,  # noqa: F401 - the fixture, used through pytestmark
    port_is_open,
    read_jobs,
    scripted_request,
    wait_stage,
    wait_status,
)

pytestmark = pytest.mark.usefixtures("kill_alarm")

STOP_GRACE_S = 5  # SIGTERM -> SIGKILL for the compile child in these tests
SHUTDOWN_BUDGET_S = STOP_GRACE_S + 5 + 5 + 5  # grace, the runner's margin, the transports, slack


def test_sigterm_fails_the_running_job_keeps_the_queued_one_and_restart_runs_it(tmp_path):
    archive = make_sample_archive(tmp_path / "model")
    state = tmp_path / "state"
    env = {"NEO_AGENT_STOP_GRACE_S": str(STOP_GRACE_S)}
    daemon = DaemonProcess(state, env={**env, **BUSY_BENCH_ENV}).start()  # "first" runs until the signal
    try:
        client = daemon.client()
        client.create_compilation_job(**job_request("first", archive.as_uri(), (tmp_path / "o1").as_uri()))
        wait_status(client, "first", {"INPROGRESS"}, timeout=60)
        client.create_compilation_job(**job_request("second", archive.as_uri(), (tmp_path / "o2").as_uri()))
        # Signal once the child is in Python code that takes SIGTERM at once (not in TVM's native
        # build, nor still starting up), so the stop is the child's own and not a SIGKILL.
        wait_stage(state, "first", "benchmark")
        began = time.monotonic()
        daemon.send(signal.SIGTERM)
        assert daemon.wait(SHUTDOWN_BUDGET_S) == 0, daemon.log()
        assert time.monotonic() - began < SHUTDOWN_BUDGET_S
    finally:
        daemon.kill()
    log = daemon.log()
    jobs = read_jobs(state)
    assert jobs["first"].status == Status.FAILED
    assert jobs["first"].failure_reason.startswith("ServerError: AgentShutdown:"), jobs["first"].failure_reason
    assert jobs["second"].status == Status.STARTING
    assert "SIGTERM: shutting down" in log
    assert "1 running job(s) ended (1 FAILED with AgentShutdown)" in log, log
    assert "1 queued job(s) kept for the next start" in log, log
    assert not port_is_open(daemon.url)

    again = DaemonProcess(state, env=env).start()
    try:
        client = again.client()
        done = wait_status(client, "second", {"COMPLETED", "FAILED", "STOPPED"})
        assert done["CompilationJobStatus"] == "COMPLETED", done["FailureReason"]
        assert client.describe_compilation_job(CompilationJobName="first")["CompilationJobStatus"] == "FAILED"
    finally:
        assert again.stop(SHUTDOWN_BUDGET_S) == 0, again.log()


def test_shutdown_refuses_new_jobs_first_and_a_second_signal_forces_exit(tmp_path):
    state = tmp_path / "state"
    # The job ignores SIGTERM, so stage 2 would wait the whole 30 s grace for it.
    daemon = DaemonProcess(state, scripted=True, args=("--stop-grace-s", "30")).start()
    child_pid = None
    try:
        client = daemon.client()
        client.create_compilation_job(**scripted_request("stubborn", "stage=compile ignore-term sleep=120"))
        wait_status(client, "stubborn", {"INPROGRESS"}, timeout=30)
        child_pid = _wait_for_pid(state, "stubborn")
        time.sleep(0.5)  # let the child install its SIGTERM policy

        daemon.send(signal.SIGTERM)
        daemon.wait_log("shutting down")
        # Stage 1 refuses new jobs with AWS's 503 (SDKs retry it); the rest of the API still
        # answers while stage 2 waits for the stubborn job.
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            client.create_compilation_job(**scripted_request("latecomer", "stage=compile"))
        assert refused.value.response["Error"]["Code"] == "ServiceUnavailable"
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert client.describe_compilation_job(CompilationJobName="stubborn")["CompilationJobStatus"] == "INPROGRESS"
        assert daemon.proc.poll() is None, "stage 2 should still be waiting for the stubborn job"

        began = time.monotonic()
        daemon.send(signal.SIGINT)
        assert daemon.wait(10) == 128 + signal.SIGINT, daemon.log()
        assert time.monotonic() - began < 5
        assert "forced exit; killed 1 compile process group(s)" in daemon.log()
        _wait_gone(child_pid)
    finally:
        daemon.kill()
        if child_pid and psutil.pid_exists(child_pid):
            os.killpg(child_pid, signal.SIGKILL)

    # The next start finds the job its predecessor abandoned, and says so.
    again = DaemonProcess(state, scripted=True).start()
    try:
        describe = again.client().describe_compilation_job(CompilationJobName="stubborn")
        assert describe["CompilationJobStatus"] == "FAILED"
        assert describe["FailureReason"].startswith("ServerError: AgentRestart:")
    finally:
        assert again.stop() == 0, again.log()


def test_sigint_alone_is_an_orderly_shutdown(tmp_path):
    daemon = DaemonProcess(tmp_path / "state", scripted=True).start()
    daemon.send(signal.SIGINT)
    assert daemon.wait(SHUTDOWN_BUDGET_S) == 0, daemon.log()
    assert "SIGINT: shutting down" in daemon.log() and "stopped in" in daemon.log()


def _wait_for_pid(state, name: str, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = read_jobs(state)[name].pid
        if pid:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"{name} never recorded its compile process")


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"compile process {pid} outlived the forced exit")


# --- refusing to start ----------------------------------------------------------------------
def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env=clean_env(**(env or {})))


def test_a_non_loopback_bind_without_credentials_refuses_to_start(tmp_path):
    proc = run_cli("run", "--http", "0.0.0.0:0", "--state-dir", str(tmp_path / "state"))
    assert proc.returncode == 2
    assert "NEO_AGENT_HTTP_CREDENTIALS" in proc.stderr and "ready" not in proc.stderr


def test_a_bad_address_or_a_taken_port_refuses_to_start(tmp_path):
    proc = run_cli("run", "--http", "nonsense", "--state-dir", str(tmp_path / "state"))
    assert proc.returncode == 2 and "NEO_AGENT_HTTP" in proc.stderr
    daemon = DaemonProcess(tmp_path / "one", scripted=True).start()
    try:
        taken = daemon.url.removeprefix("http://")
        proc = run_cli("run", "--http", taken, "--state-dir", str(tmp_path / "two"))
        assert proc.returncode == 2 and "cannot listen" in proc.stderr
    finally:
        assert daemon.stop() == 0


def test_a_malformed_credential_is_refused_without_echoing_it(tmp_path):
    proc = run_cli("run", "--state-dir", str(tmp_path), env={"NEO_AGENT_HTTP_CREDENTIALS": "AKID:ok,s3cr3t-without-key"})
    assert proc.returncode == 2 and "entry 2" in proc.stderr and "s3cr3t" not in proc.stderr


# --- configuration ------------------------------------------------------------------------
def test_run_defaults_to_loopback_8573(monkeypatch):
    for key in list(os.environ):
        if key.startswith("NEO_AGENT_"):
            monkeypatch.delenv(key)
    args = build_parser().parse_args(["run"])
    assert (args.http, args.state_dir) == (None, None)
    config = AgentConfig.load(http=args.http, state_dir=args.state_dir)
    assert config.http == "127.0.0.1:8573" and config.http_credentials == {}
    monkeypatch.setenv("NEO_AGENT_HTTP", "127.0.0.1:9000")
    assert AgentConfig.load().http == "127.0.0.1:9000"
    assert AgentConfig.load(http="127.0.0.1:9001").http == "127.0.0.1:9001"  # the command line wins


def test_credentials_load_from_the_environment_and_stay_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("NEO_AGENT_HTTP_CREDENTIALS", "AKID1:secret/one+x, AKID2:secret-two")
    config = AgentConfig.load(state_dir=tmp_path)
    assert config.http_credentials == {"AKID1": "secret/one+x", "AKID2": "secret-two"}
    assert "secret" not in repr(config)
    assert "http_credentials" not in config.to_child()  # spec.json is a file on disk
    assert parse_credentials("") == {}
    with pytest.raises(ConfigError, match="entry 1"):
        parse_credentials(":no-key-id")


def test_an_empty_http_setting_turns_the_endpoint_off(tmp_path):
    from agent.service.agent import Agent
    from agent.service.daemon import build_transports
    from agent.transports.http import HttpTransport

    config = AgentConfig(state_dir=tmp_path / "state")
    agent = Agent(config)
    try:
        assert [type(t) for t in build_transports(config, agent)] == [HttpTransport]
        config.http = ""
        assert build_transports(config, agent) == []
    finally:
        agent.store.close()


# --- the extension point ------------------------------------------------------------------
class RecordingTransport:
    def __init__(self, name: str, record: list, fail: bool = False):
        self.name, self.record, self.fail = name, record, fail

    def start(self) -> None:
        if self.fail:
            raise ConfigError(f"{self.name}: cannot start")
        self.record.append(f"start {self.name}")

    def stop(self, timeout: float) -> None:
        self.record.append(f"stop {self.name}")


def test_transports_start_after_the_agent_and_stop_after_the_runner(tmp_path, caplog):
    """Stopping last lets the transports publish the final status of the job the runner ended."""
    record: list[str] = []

    def factory(config, agent):
        original = agent.runner.shutdown
        agent.runner.shutdown = lambda timeout=None: (record.append("runner shutdown"), original(timeout))[1]
        return [RecordingTransport("a", record), RecordingTransport("b", record)]

    daemon = Daemon(AgentConfig(state_dir=tmp_path / "state"), transport_factory=factory)
    with caplog.at_level(logging.INFO, logger="agent.service.daemon"):
        daemon.start()
        daemon.shutdown()
        daemon.shutdown()  # safe twice
    # (Agent.shutdown asks the runner once more; the runner's shutdown is safe twice.)
    assert record[:5] == ["start a", "start b", "runner shutdown", "stop b", "stop a"]
    assert any("ready: a, b;" in message for message in caplog.messages)


def test_a_transport_that_cannot_start_stops_the_others(tmp_path):
    record: list[str] = []

    def factory(config, agent):
        return [RecordingTransport("a", record), RecordingTransport("b", record, fail=True)]

    daemon = Daemon(AgentConfig(state_dir=tmp_path / "state"), transport_factory=factory)
    with pytest.raises(ConfigError, match="b: cannot start"):
        daemon.start()
    assert record == ["start a", "stop a"]  # only what started is stopped
    daemon.shutdown()  # already shut down: nothing happens
    assert record == ["start a", "stop a"]


def test_run_serves_mqtt_when_enabled(tmp_path, mosquitto):
    """`neo-agent run` with the mqtt section enabled answers on the broker beside HTTP."""
    from agent.client.remote import RemoteAgent
    from agent.config import MqttConfig

    env = {"NEO_AGENT_MQTT_ENABLED": "true", "NEO_AGENT_MQTT_HOST": "127.0.0.1",
           "NEO_AGENT_MQTT_PORT": str(mosquitto.port), "NEO_AGENT_MQTT_THING_NAME": "daemon-thing"}
    daemon = DaemonProcess(tmp_path / "state", env=env).start()
    try:
        daemon.wait_log("mqtt://127.0.0.1")
        settings = MqttConfig(host="127.0.0.1", port=mosquitto.port, thing_name="workstation")
        with RemoteAgent(settings, "daemon-thing") as remote:
            assert remote.call("ListCompilationJobs", {})["CompilationJobSummaries"] == []
            with pytest.raises(ApiError) as excinfo:
                remote.call("DescribeCompilationJob", {"CompilationJobName": "nope"})
            assert excinfo.value.code == "ResourceNotFound"
    finally:
        daemon.stop()


def test_the_final_status_of_a_job_ended_by_shutdown_leaves_before_the_process_does(tmp_path, mosquitto):
    """SIGTERM with a job running: the runner fails it (AgentShutdown) while the MQTT transport is
    still up, so its FAILED event reaches the broker before the exit, not after the next start."""
    from agent.client.remote import RemoteAgent
    from agent.config import MqttConfig
    from tests.transports.mqtt_harness import RawClient, body

    env = {"NEO_AGENT_MQTT_ENABLED": "true", "NEO_AGENT_MQTT_HOST": "127.0.0.1",
           "NEO_AGENT_MQTT_PORT": str(mosquitto.port), "NEO_AGENT_MQTT_THING_NAME": "stopping-thing",
           "NEO_AGENT_FILE_URI_CHANNELS": "http,mqtt"}  # the scripted request names file:// locations
    watcher = RawClient(mosquitto)
    watcher.subscribe("neo/stopping-thing/jobs/+/events")
    daemon = DaemonProcess(tmp_path / "state", scripted=True, env=env).start()
    try:
        daemon.wait_log("mqtt://127.0.0.1")
        settings = MqttConfig(host="127.0.0.1", port=mosquitto.port, thing_name="workstation")
        with RemoteAgent(settings, "stopping-thing") as remote:  # events go back where it came from
            remote.call("CreateCompilationJob", scripted_request("busy", "stage=compile sleep=120"))
        wait_status(daemon.client(), "busy", {"INPROGRESS"}, timeout=30)
        daemon.send(signal.SIGTERM)
        assert daemon.wait(SHUTDOWN_BUDGET_S) == 0, daemon.log()
        final = watcher.wait_for(lambda m: body(m).get("status") == "FAILED", timeout=5)
        assert "AgentShutdown" in body(final)["failureReason"]
    finally:
        daemon.kill()
        watcher.close()
