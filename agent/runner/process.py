"""One compile child, watched from the parent.

The parent owns three limits the child cannot be trusted to keep: the deadline (a grace
period after the child's own), the memory limit (RSS of the whole process group, polled), and
Stop (SIGTERM to the group, SIGKILL after the grace period). Whatever happens, the group is
killed before `wait` returns, so a job never leaves an orphan behind.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.1
# What a job's child writes (the model unpacked, the artifact, its metrics) and the job's log
# are the agent user's alone, whatever the agent's own umask (systemd's unit sets 0077 too).
CHILD_UMASK = 0o077
PRIVATE_FILE_MODE = 0o600


@dataclasses.dataclass
class Outcome:
    """How a child ended, from the parent's point of view."""

    result: dict[str, Any] | None = None  # the child's "result" message
    failure: str = ""  # the child's FailureReason
    stopped: bool = False  # the child acknowledged SIGTERM
    killed_for: str = ""  # "memory" | "deadline" | "stop" when the parent killed it
    returncode: int | None = None
    peak_rss_mb: float = 0.0


# What the compile child must not inherit: the agent's own secrets for the endpoints it serves
# (the child serves nothing) and Greengrass's IPC token (the child never talks to the nucleus).
# AWS_* stays: boto3's chain and Greengrass TES reach S3 through them. The S3 secrets of the
# agent's configuration are handed over explicitly (AgentConfig.child_environment).
WITHHELD_FROM_CHILD = ("NEO_AGENT_HTTP_CREDENTIALS", "NEO_AGENT_MQTT_PASSWORD", "SVCUID")


def child_base_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name not in WITHHELD_FROM_CHILD}


class ChildProcess:
    def __init__(
        self,
        spec_path: Path,
        log_path: Path,
        on_message: Callable[[dict], None],
        *,
        memory_limit_mb: int,
        kill_at: float,
        stop_grace_s: float,
        clock: Callable[[], float] = time.time,
        env: dict[str, str] | None = None,
    ):
        self.spec_path = spec_path
        self.log_path = log_path
        self.on_message = on_message
        self.memory_limit_mb = memory_limit_mb
        self.kill_at = kill_at
        # The deadline is kept on the monotonic clock: a device's wall clock jumps (a Raspberry
        # Pi has no RTC, and NTP moves it by years after boot), and a jump must neither kill a
        # job early nor let a stuck one run on.
        self._kill_at_monotonic = time.monotonic() + (kill_at - clock())
        self.stop_grace_s = stop_grace_s
        self.clock = clock
        self.env = env  # extra variables for the child (secrets that must not go in its spec file)
        self.outcome = Outcome()
        self._stop_requested = threading.Event()
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
        with open(log_fd, "ab") as log_file:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "agent.runner.child", str(self.spec_path), str(write_fd)],
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,  # its own session and process group
                umask=CHILD_UMASK,
                env={**child_base_environment(), **(self.env or {})},
            )
        os.close(write_fd)
        self._reader = threading.Thread(target=self._read, args=(read_fd,), daemon=True, name=f"child-{self.pid}")
        self._reader.start()

    def request_stop(self) -> None:
        self._stop_requested.set()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "r") as stream:
            for line in stream:
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("unreadable line from child %s: %r", self.pid, line[:200])
                    continue
                event = message.get("event")
                if event == "result":
                    self.outcome.result = message
                elif event == "failure":
                    self.outcome.failure = message.get("reason", "")
                elif event == "stopped":
                    self.outcome.stopped = True
                self.on_message(message)

    def wait(self) -> Outcome:
        """Watch the child until it exits; enforce memory, deadline and stop."""
        assert self._proc is not None
        proc = self._proc
        term_sent_at: float | None = None
        while proc.poll() is None:
            rss = _group_rss_mb(proc.pid)
            self.outcome.peak_rss_mb = max(self.outcome.peak_rss_mb, rss)
            if rss > self.memory_limit_mb and not self.outcome.killed_for:
                log.warning("child %s uses %.0f MiB > limit %d MiB: killing its group", proc.pid, rss, self.memory_limit_mb)
                self.outcome.killed_for = "memory"
                _kill_group(proc.pid, signal.SIGKILL)
            elif time.monotonic() >= self._kill_at_monotonic and not self.outcome.killed_for:
                log.warning("child %s is past its deadline: killing its group", proc.pid)
                self.outcome.killed_for = "deadline"
                _kill_group(proc.pid, signal.SIGKILL)
            elif self._stop_requested.is_set():
                if term_sent_at is None:
                    term_sent_at = time.monotonic()
                    _kill_group(proc.pid, signal.SIGTERM)
                elif time.monotonic() - term_sent_at > self.stop_grace_s and not self.outcome.killed_for:
                    log.warning("child %s ignored SIGTERM for %.0f s: SIGKILL", proc.pid, self.stop_grace_s)
                    self.outcome.killed_for = "stop"
                    _kill_group(proc.pid, signal.SIGKILL)
            time.sleep(POLL_INTERVAL_S)
        # The child is gone; its helpers (benchmark workers) must not outlive it.
        _kill_group(proc.pid, signal.SIGKILL)
        self._reader.join(timeout=5)
        self.outcome.returncode = proc.returncode
        return self.outcome


def _group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in the group (the child and whatever it started)."""
    total = 0
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                total += proc.memory_info().rss
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return total / 2**20


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_leftover_child(pid: int | None) -> bool:
    """After an agent restart: kill a compile child still running from the last life.

    Only a process that really is our child (by its command line) is touched, so a recycled
    pid never costs an innocent process its life.
    """
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if "agent.runner.child" not in " ".join(proc.cmdline()):
            return False
    except psutil.Error:
        return False
    _kill_group(pid, signal.SIGKILL)
    return True
