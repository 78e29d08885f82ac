"""`neo-agent health`: exit 0 while the agent answers on its endpoint with room to work, else 1
with one line that says what is wrong; against a real `neo-agent run` where it can be."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.service import health
from tests.service.daemon_process import REPO, DaemonProcess, clean_env, kill_alarm  # noqa: F401

pytestmark = pytest.mark.usefixtures("kill_alarm")


def write(directory: Path, text: str) -> Path:
    path = directory / "agent.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env=clean_env(**(env or {})))


def test_health_is_0_while_the_agent_answers_and_1_once_it_is_gone(tmp_path):
    state = tmp_path / "state"
    daemon = DaemonProcess(state).start()
    options = ("health", "--http", daemon.url.removeprefix("http://"), "--state-dir", str(state))
    try:
        done = run_cli(*options, env={"NEO_AGENT_MIN_FREE_MB": "1"})
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.fullmatch(rf"neo-agent health: OK: {daemon.url} answered ListCompilationJobs in \d+ ms; state "
                            rf"directory {re.escape(str(state))} is writable with \d+ MiB free \(min_free_mb 1\)\n",
                            done.stdout), done.stdout
    finally:
        assert daemon.stop() == 0
    done = run_cli(*options, env={"NEO_AGENT_MIN_FREE_MB": "1"})
    assert done.returncode == 1 and done.stderr == ""
    assert done.stdout.startswith(f"neo-agent health: FAILED: nothing answers on {daemon.url} (connection refused)")
    assert done.stdout.count("\n") == 1 and "(fine: state directory" in done.stdout


def test_health_of_a_wrong_configuration_is_one_line_and_1(tmp_path):
    path = write(tmp_path, "[agent]\nqueue_limit = -1\n")
    done = run_cli("health", "--config", str(path))
    assert (done.returncode, done.stderr) == (1, "")
    said = f"neo-agent health: FAILED: configuration: {path}:agent.queue_limit: must be at least 1, got -1\n"
    assert done.stdout == said
    done = run_cli("health", env={"NEO_AGENT_HTTP": "nonsense"})
    assert done.returncode == 1 and "FAILED: http (NEO_AGENT_HTTP, --http): expected HOST:PORT" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


@pytest.fixture
def signed_endpoint(tmp_path):
    """The endpoint checking signatures on loopback, as it does off loopback (tests stay on 127.0.0.1)."""
    from agent.service.agent import Agent
    from agent.transports.http import HttpTransport

    agent = Agent(AgentConfig(state_dir=tmp_path / "served"))
    transport = HttpTransport(agent.api_for("http"), "127.0.0.1:0", credentials={"AKIDHEALTH": "right"},
                              require_signature=True)
    transport.start()
    yield transport
    transport.stop(timeout=5)
    agent.store.close()


def test_health_signs_with_the_first_configured_key(signed_endpoint, tmp_path):
    def check(**values):
        return health.check(AgentConfig(state_dir=tmp_path, http=signed_endpoint.url.removeprefix("http://"),
                                        min_free_mb=0, **values), timeout=5)

    ok, line = check(http_credentials={"AKIDHEALTH": "right"})
    assert ok and line.startswith(f"OK: {signed_endpoint.url} answered ListCompilationJobs"), line
    ok, line = check(http_credentials={"AKIDHEALTH": "wrong"})
    assert not ok and f"{signed_endpoint.url} refused ListCompilationJobs: 403 InvalidSignatureException" in line
    ok, line = check()
    assert not ok and "403 MissingAuthenticationTokenException" in line


def test_health_names_what_is_wrong_with_the_endpoint_or_the_state_directory(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # connections complete in the backlog; nothing ever answers
    try:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        ok, line = health.check(AgentConfig(state_dir=tmp_path, http=address, min_free_mb=0), timeout=0.3)
        assert not ok and line.startswith(f"FAILED: http://{address} did not answer within 0.3 s"), line
    finally:
        silent.close()
    cases = [
        (dict(http=""), "the HTTP endpoint is off (http.endpoint is empty)"),
        (dict(http="127.0.0.1:0"), "http.endpoint 127.0.0.1:0 has port 0"),
        (dict(http="192.0.2.1:8573"), "http://192.0.2.1:8573 checks signatures and http.credentials holds no key"),
        (dict(state_dir=tmp_path / "absent"), f"state directory {tmp_path / 'absent'} does not exist"),
        (dict(min_free_mb=2**40), f"state directory {tmp_path} has "),
    ]
    for values, part in cases:
        ok, line = health.check(AgentConfig(**{"state_dir": tmp_path, "http": "127.0.0.1:1", **values}), timeout=1)
        assert not ok and line.startswith("FAILED: ") and part in line, line
    assert "below min_free_mb 1099511627776" in line


def test_health_finds_a_state_directory_it_cannot_write(tmp_path, monkeypatch):
    def refused(**kwargs):  # what a read-only mount or a foreign owner says (root would pass a chmod)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(health.tempfile, "mkstemp", refused)
    ok, line = health.check(AgentConfig(state_dir=tmp_path, http="", min_free_mb=0))
    assert not ok and f"state directory {tmp_path} is not writable (Permission denied)" in line
