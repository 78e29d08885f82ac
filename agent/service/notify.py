"""systemd's readiness protocol (sd_notify), spoken directly: no libsystemd, no dependency.

    notifier = Notifier.from_environment()     # takes NOTIFY_SOCKET etc. out of os.environ
    notifier.ready("idle, 0 queued")           # READY=1 + STATUS=
    notifier.watchdog()                        # WATCHDOG=1, every watchdog_interval() / 2
    notifier.stopping()                        # STOPPING=1

systemd (Type=notify) hands the service NOTIFY_SOCKET: the path of an AF_UNIX datagram
socket, or an abstract name written with a leading '@'. Each message is one datagram of
newline-separated KEY=VALUE lines (sd_notify(3)). With WatchdogSec= set it also hands
WATCHDOG_USEC (and WATCHDOG_PID, the process meant to ping); a service that stays silent for
that long is killed with SIGABRT and, with Restart=on-failure, started again.

Outside systemd NOTIFY_SOCKET is unset and every call is a no-op. Sending never raises and
never blocks for long: the agent must not fail, nor stall a runner thread, because its
supervisor went away. The first failure is logged as a warning, the rest at debug level
until a send succeeds again.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Mapping, MutableMapping

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 0.5  # a full receive queue drops a message rather than stalling the agent
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str | bytes | None:
    """NOTIFY_SOCKET as an address for sendto: a path, or b"\\0name" for '@name'; None if unusable."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # empty, or a form this client does not speak (vsock:, relative paths)


def watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """WATCHDOG_USEC in seconds, when it is meant for process `pid`; None when there is no watchdog.

    WATCHDOG_PID names the process systemd expects pings from; any other process (a child that
    inherited the variables) must not take the watchdog as its own.
    """
    raw_pid = environ.get("WATCHDOG_PID", "")
    if raw_pid:
        try:
            if int(raw_pid) != pid:
                return None
        except ValueError:
            return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Notifier:
    """One service's channel to systemd. Thread-safe: job events arrive on the runner's threads."""

    def __init__(self, notify_socket: str = "", watchdog_s: float | None = None):
        self.address = socket_address(notify_socket)
        if notify_socket and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or an @abstract name; not notifying systemd", notify_socket)
        self._watchdog_s = watchdog_s if self.address is not None else None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None, unset: bool = True) -> "Notifier":
        """Read NOTIFY_SOCKET and the watchdog settings; with `unset`, remove them from `environ`.

        Removing them (sd_notify's unset_environment) keeps them from the compile children,
        which inherit the agent's environment and must not speak for the service.
        """
        environ = os.environ if environ is None else environ
        notifier = cls(environ.get("NOTIFY_SOCKET", ""), watchdog_seconds(environ, os.getpid()))
        if unset:
            for name in NOTIFY_VARIABLES:
                environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """WatchdogSec in seconds, or None; ping at half of it (sd_watchdog_enabled(3))."""
        return self._watchdog_s

    # --- the messages -----------------------------------------------------------------
    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *_status_line(status))

    def status(self, text: str) -> bool:
        return self.send(*_status_line(text))

    def watchdog(self) -> bool:
        return self._watchdog_s is not None and self.send("WATCHDOG=1")

    def stopping(self, status: str = "", extend_timeout_s: float | None = None) -> bool:
        """STOPPING=1; with `extend_timeout_s`, ask for that long to stop (systemd only ever
        extends TimeoutStopSec with it, never shortens it)."""
        extra = [f"EXTEND_TIMEOUT_USEC={int(extend_timeout_s * 1e6)}"] if extend_timeout_s else []
        return self.send("STOPPING=1", *_status_line(status), *extra)

    def send(self, *lines: str) -> bool:
        """One datagram of `lines`; True if it was sent. Never raises."""
        if self.address is None or not lines:
            return False
        data = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._socket.settimeout(SEND_TIMEOUT_S)
                self._socket.sendto(data, self.address)
            except OSError as exc:
                level = logging.DEBUG if self._failing else logging.WARNING
                log.log(level, "could not notify systemd (%s): %s", lines[0], exc)
                self._failing = True
                return False
            if self._failing:
                log.info("notifying systemd again")
                self._failing = False
            return True

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def _status_line(text: str) -> list[str]:
    """STATUS= is one line: newlines in job names or messages must not start a new assignment."""
    text = " ".join(text.split())
    return [f"STATUS={text}"] if text else []
