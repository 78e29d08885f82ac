"""systemd/: the unit as systemd itself reads it, the installer, and the agent speaking sd_notify.

No systemd runs here (nor in CI's container): `systemd-analyze verify` and `security --offline`
read the unit the way the manager would, in a scratch root holding the unit byte for byte,
the console script at its ExecStart path and the distribution's own units. The notify test
runs the real `neo-agent run` with NOTIFY_SOCKET pointing at a datagram socket this test
binds, as systemd's would be, and watches READY, STATUS, WATCHDOG and STOPPING go by.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.configfile import load_with_origins
from agent.service.daemon import WAIT_SLICE_S, shutdown_budget_s
from tests.service.daemon_process import (
    REPO,
    DaemonProcess,
    kill_alarm,  # noqa: F401 - the fixture, used through pytestmark
    port_is_open,
    read_jobs,
    scripted_request,
    wait_status,
)

pytestmark = pytest.mark.usefixtures("kill_alarm")

UNIT = REPO / "systemd" / "neo-agent.service"
INSTALL = REPO / "systemd" / "install.sh"
EXEC_PATH = "/opt/neo-edge-agent/bin/neo-agent"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 2.0  # systemd-analyze security's score for the unit (0 best, 10 worst); it is 1.8
ALL_TRANSPORTS = 4  # HTTP, MQTT, AWS IoT Core, IoT Jobs


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/setup installs Debian's systemd package)")
    return path


def unit_settings(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value, in order (a key may repeat, as SystemCallFilter= does)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture
def unit_root(tmp_path) -> Path:
    """A scratch root for systemd-analyze: the distribution's units, ours, and the real console script."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/neo-agent.service")
    script = shutil.which("neo-agent", path=str(Path(sys.executable).parent))
    assert script, "the venv has no neo-agent console script"
    exec_path = root / EXEC_PATH.lstrip("/")
    exec_path.parent.mkdir(parents=True)
    shutil.copy(script, exec_path)
    return root


def analyze(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([systemd_tool("systemd-analyze"), *args, f"--root={root}", "neo-agent.service"],
                          capture_output=True, text=True, timeout=60)


# --- the unit -------------------------------------------------------------------------------
def test_systemd_analyze_verify_accepts_the_unit_without_a_word(unit_root):
    done = analyze(unit_root, "verify", "--man=no", "--generators=no")
    assert done.returncode == 0 and (done.stdout + done.stderr).strip() == "", done.stdout + done.stderr


def test_verify_would_notice_a_bad_line_or_a_missing_executable(unit_root):
    """verify exits 0 on unknown keys and values (it only warns), hence the test above wants silence."""
    unit = unit_root / "etc/systemd/system/neo-agent.service"
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHome=maybe\nProtectHomme=yes"))
    (unit_root / EXEC_PATH.lstrip("/")).unlink()
    done = analyze(unit_root, "verify", "--man=no", "--generators=no")
    said = done.stdout + done.stderr
    assert "ProtectHomme" in said and "protect home" in said.lower() and f"{EXEC_PATH} is not executable" in said


def test_systemd_analyze_security_rates_the_sandbox_ok(unit_root):
    # --threshold counts tenths: past it, systemd-analyze exits non-zero.
    done = analyze(unit_root, "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}")
    found = re.search(r"Overall exposure level for neo-agent.service: ([\d.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert done.returncode == 0 and float(found.group(1)) <= MAX_EXPOSURE, done.stdout


def test_the_unit_is_a_notify_service_with_restart_limits_and_resource_bounds():
    unit = unit_settings()
    service, first = unit["Service"], {k: v[0] for k, v in unit["Service"].items()}
    assert first["Type"] == "notify" and first["NotifyAccess"] == "main"
    assert first["ExecStart"].split()[0] == EXEC_PATH and " run --state-dir %S/neo-agent" in first["ExecStart"]
    assert first["User"] == first["Group"] == "neo-agent"
    assert first["EnvironmentFile"] == "-/etc/neo-agent/agent.env"
    assert first["Restart"] == "on-failure" and "RestartSec" in service
    assert first["RestartPreventExitStatus"] == "2"  # neo-agent's exit code for a refused configuration
    assert {"StartLimitIntervalSec", "StartLimitBurst"} <= unit["Unit"].keys()  # [Unit]'s, not [Service]'s
    assert "StartLimitIntervalSec" not in service
    assert first["KillMode"] == "mixed"
    assert first["MemoryMax"] and first["CPUWeight"] and first["OOMPolicy"] == "continue"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_stop_timeout_covers_the_agents_shutdown_budget_and_the_watchdog_its_main_loop():
    service = {k: v[0] for k, v in unit_settings()["Service"].items()}
    budget = shutdown_budget_s(AgentConfig(state_dir=Path("/nonexistent")), ALL_TRANSPORTS)
    assert budget == 40.0  # the arithmetic the unit's comment shows
    assert seconds(service["TimeoutStopSec"]) >= budget
    assert seconds(service["WatchdogSec"]) >= 10 * WAIT_SLICE_S  # pings come every WAIT_SLICE_S at most


def test_the_unit_is_sandboxed():
    service = unit_settings()["Service"]
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/neo-agent",
        "PrivateTmp": "yes", "ProtectHome": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
        "RestrictNamespaces": "user net", "LockPersonality": "yes", "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
        "UMask": "0077", "StateDirectory": "neo-agent", "StateDirectoryMode": "0700",
        "ConfigurationDirectory": "neo-agent", "ConfigurationDirectoryMode": "0700",
    }
    assert {key: service.get(key, [None])[-1] for key in expected} == expected
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    # The landlock calls are in no set systemd 252 names: without them the process that reads the
    # model could not confine its file access (agent/runner/landlock.py).
    assert service["SystemCallFilter"] == [
        "@system-service", "landlock_create_ruleset landlock_add_rule landlock_restrict_self", "~@privileged"]
    # Left off on purpose: TVM's LLVM JIT needs memory that is written, then executed (see the unit).
    assert "MemoryDenyWriteExecute" not in service


def seconds(value: str) -> float:
    found = re.fullmatch(r"(\d+)\s*(s|min)?", value)
    assert found, f"unexpected time span {value!r}"
    return int(found.group(1)) * (60 if found.group(2) == "min" else 1)


# --- the installer ------------------------------------------------------------------------
def run_install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=120)


def mode_owner(path: Path) -> tuple[str, int]:
    info = path.stat()
    return oct(stat.S_IMODE(info.st_mode)), info.st_uid


@pytest.mark.skipif(os.geteuid() != 0, reason="the installer creates a user and chowns; it runs as root")
def test_install_into_a_scratch_root_makes_the_user_private_dirs_and_config(tmp_path):
    systemd_tool("systemctl")
    root = tmp_path / "image"
    root.mkdir()
    real = _real_system_state()

    done = run_install("--root", str(root))
    assert done.returncode == 0, done.stderr
    entry = next(line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("neo-agent:"))
    _, _, uid, gid, _, home, shell = entry.split(":")
    assert (home, shell) == ("/var/lib/neo-agent", "/usr/sbin/nologin")
    assert any(line.startswith(f"neo-agent:x:{gid}:") or line.startswith(f"neo-agent:!:{gid}:")
               for line in (root / "etc/group").read_text().splitlines())
    assert mode_owner(root / "var/lib/neo-agent") == ("0o700", int(uid))
    assert mode_owner(root / "etc/neo-agent") == ("0o700", int(uid))
    assert mode_owner(root / "etc/neo-agent/agent.env") == ("0o600", int(uid))
    toml = root / "etc/neo-agent/agent.toml"
    assert mode_owner(toml) == ("0o600", int(uid))
    installed = load_with_origins(toml, environ={})  # the example, with the unit's state directory set
    assert installed.config.state_dir == Path("/var/lib/neo-agent") and "agent.state_dir" in installed.origins
    assert (root / "etc/systemd/system/neo-agent.service").read_bytes() == UNIT.read_bytes()
    wants = root / "etc/systemd/system/multi-user.target.wants/neo-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/neo-agent.service"

    # Again, after an operator edited the configuration and loosened its mode: kept, tightened.
    env = root / "etc/neo-agent/agent.env"
    env.write_text("NEO_AGENT_HTTP=127.0.0.1:9000\n")
    env.chmod(0o644)
    toml.write_text("[agent]\nqueue_limit = 5\n")
    toml.chmod(0o644)
    (root / "var/lib/neo-agent").chmod(0o755)
    again = run_install("--root", str(root))
    assert again.returncode == 0, again.stderr
    assert env.read_text() == "NEO_AGENT_HTTP=127.0.0.1:9000\n"
    assert mode_owner(env) == ("0o600", int(uid))
    assert toml.read_text() == "[agent]\nqueue_limit = 5\n" and mode_owner(toml) == ("0o600", int(uid))
    assert mode_owner(root / "var/lib/neo-agent") == ("0o700", int(uid))
    assert [line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()] == ["neo-agent"]

    # --check: everything but the venv, which --root does not build; then that too.
    check = run_install("--check", "--root", str(root))
    assert check.returncode == 1 and "/opt/neo-edge-agent/bin/neo-agent is missing" in check.stderr
    exec_path = root / EXEC_PATH.lstrip("/")
    exec_path.parent.mkdir(parents=True)
    exec_path.write_text("#!/bin/sh\n")
    exec_path.chmod(0o755)
    check = run_install("--check", "--root", str(root))
    assert check.returncode == 0 and "ok" in check.stdout, check.stderr

    assert _real_system_state() == real, "the scratch install touched the real system"


def _real_system_state() -> tuple:
    try:
        user = pwd.getpwnam("neo-agent")
    except KeyError:
        user = None
    paths = ("/var/lib/neo-agent", "/etc/neo-agent", "/etc/systemd/system/neo-agent.service", "/opt/neo-edge-agent")
    return user, tuple(os.path.exists(p) for p in paths)


def test_install_check_names_what_is_wrong(tmp_path):
    done = run_install("--check", "--root", str(tmp_path))
    assert done.returncode == 1
    for problem in ("no user neo-agent", "/var/lib/neo-agent is missing", "/etc/neo-agent/agent.env is missing",
                    "/etc/neo-agent/agent.toml is missing",
                    "neo-agent.service is missing or differs"):
        assert problem in done.stderr, done.stderr


# --- sd_notify, spoken by the real agent ------------------------------------------------------
class NotifySocket:
    """What systemd's notify socket receives: datagrams of KEY=VALUE lines, kept in order."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="neo-notify-")  # short: AF_UNIX paths stop at 107 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[list[str]] = []

    def lines(self) -> list[str]:
        return [line for message in self.messages for line in message]

    def wait_for(self, wanted, what: str, timeout: float = 30.0) -> list[str]:
        """Receive until `wanted(lines)` holds; the lines so far."""
        deadline = time.monotonic() + timeout
        while not wanted(self.lines()):
            if time.monotonic() > deadline:
                raise AssertionError(f"never received {what}; got {self.messages}")
            try:
                self.messages.append(self.sock.recv(65536).decode().split("\n"))
            except socket.timeout:
                pass
        return self.lines()

    def drain(self, duration: float = 0.3) -> list[str]:
        """Receive whatever arrives within `duration`; the lines so far."""
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            try:
                self.messages.append(self.sock.recv(65536).decode().split("\n"))
            except socket.timeout:
                pass
        return self.lines()

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify_socket():
    sock = NotifySocket()
    yield sock
    sock.close()


def test_the_agent_says_ready_status_watchdog_and_stopping(tmp_path, notify_socket):
    state = tmp_path / "state"
    daemon = DaemonProcess(state, scripted=True, env={"NOTIFY_SOCKET": notify_socket.path,
                                                      "WATCHDOG_USEC": "1000000"})
    daemon.start()
    try:
        lines = notify_socket.wait_for(lambda lines: "READY=1" in lines, "READY=1")
        assert port_is_open(daemon.url), "READY=1 must wait for the transports"
        ready = next(m for m in notify_socket.messages if "READY=1" in m)
        assert ready == ["READY=1", "STATUS=idle, 0 queued"]
        assert lines.index("STATUS=starting: recovering jobs, starting transports") < lines.index("READY=1")

        # WATCHDOG_USEC=1 s: a ping every half second, from the main loop.
        began = time.monotonic()
        notify_socket.wait_for(lambda lines: lines.count("WATCHDOG=1") >= 4, "four WATCHDOG=1")
        assert time.monotonic() - began < 4

        client = daemon.client()
        client.create_compilation_job(**scripted_request("notified", "stage=compile sleep=120"))
        wait_status(client, "notified", {"INPROGRESS"}, timeout=30)
        notify_socket.wait_for(lambda lines: "STATUS=job notified in stage compile (50%), 0 queued" in lines,
                               "a STATUS naming the running job")
        child = read_jobs(state)["notified"].pid
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))], \
            "a compile child must not be able to speak for the service"

        daemon.send(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()
    finally:
        daemon.kill()
    lines = notify_socket.wait_for(lambda lines: any(line.startswith("STATUS=stopped:") for line in lines),
                                   "the final STATUS")
    stopping = next(m for m in notify_socket.messages if "STOPPING=1" in m)
    assert stopping[1] == "STATUS=stopping: job notified in stage compile (50%), 0 queued"
    extend_s = int(stopping[2].removeprefix("EXTEND_TIMEOUT_USEC=")) / 1e6
    assert extend_s == shutdown_budget_s(AgentConfig(state_dir=state, stop_grace_s=2.0), 1)
    after = lines[lines.index("STOPPING=1"):]
    assert "WATCHDOG=1" not in after, "the main loop has left: no pings during the shutdown"
    assert after[-1] == ("STATUS=stopped: 1 running job(s) ended (1 FAILED with AgentShutdown), "
                         "0 queued job(s) kept for the next start")
    assert read_jobs(state)["notified"].failure_reason.startswith("ServerError: AgentShutdown:")



# --- the daemon's side, in process ----------------------------------------------------------
class SlowTransport:
    """A transport whose start() looks at what systemd has heard so far."""

    name = "slow"

    def __init__(self, sock: NotifySocket, fail: bool = False):
        self.sock, self.fail = sock, fail
        self.heard_at_start: list[str] = []

    def start(self) -> None:
        self.heard_at_start = self.sock.drain()  # READY=1 sent early would have arrived by now
        if self.fail:
            from agent.errors import ConfigError
            raise ConfigError("slow: cannot start: port taken")

    def stop(self, timeout: float) -> None:
        pass


def notified_daemon(tmp_path, sock: NotifySocket, transports: list, watchdog_s: float | None = None):
    from agent.service.daemon import Daemon
    from agent.service.notify import Notifier

    return Daemon(AgentConfig(state_dir=tmp_path / "state"), transport_factory=lambda config, agent: transports,
                  notifier=Notifier(sock.path, watchdog_s=watchdog_s))


def test_ready_waits_for_every_transport(tmp_path, notify_socket):
    transport = SlowTransport(notify_socket)
    daemon = notified_daemon(tmp_path, notify_socket, [transport])
    daemon.start()
    try:
        assert "STATUS=starting: recovering jobs, starting transports" in transport.heard_at_start
        assert "READY=1" not in transport.heard_at_start
        assert notify_socket.wait_for(lambda lines: "READY=1" in lines, "READY=1")
    finally:
        daemon.shutdown()


def test_a_refused_start_says_why_in_the_status_and_never_ready(tmp_path, notify_socket):
    daemon = notified_daemon(tmp_path, notify_socket, [SlowTransport(notify_socket, fail=True)])
    with pytest.raises(Exception, match="port taken"):
        daemon.run()
    lines = notify_socket.wait_for(lambda lines: any(line.startswith("STATUS=failed to start:") for line in lines),
                                   "the failure's STATUS")
    assert "STATUS=failed to start: slow: cannot start: port taken" in lines and "READY=1" not in lines


def test_no_watchdog_ping_while_the_job_store_does_not_answer(tmp_path, notify_socket, caplog):
    daemon = notified_daemon(tmp_path, notify_socket, [], watchdog_s=1.0)
    daemon.start()
    try:
        daemon._tick()
        notify_socket.wait_for(lambda lines: "WATCHDOG=1" in lines, "a ping")
        pings = notify_socket.lines().count("WATCHDOG=1")
        store_count = daemon.agent.store.count
        daemon.agent.store.count = lambda statuses: (_ for _ in ()).throw(OSError("disk gone"))
        daemon._tick()
        daemon._tick()
        assert notify_socket.drain().count("WATCHDOG=1") == pings
        assert sum("withholding the watchdog ping" in message for message in caplog.messages) == 1
        daemon.agent.store.count = store_count
        daemon._tick()
        notify_socket.wait_for(lambda lines: lines.count("WATCHDOG=1") > pings, "pings again")
    finally:
        daemon.shutdown()
