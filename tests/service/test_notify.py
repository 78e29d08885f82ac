"""The sd_notify client (agent/service/notify.py) and the STATUS line (agent/service/status.py).

Real AF_UNIX datagram sockets stand in for systemd's; the daemon's use of both, with a real
agent process, is tests/service/test_systemd.py's.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid

import pytest

from agent.jobs.events import Event
from agent.jobs.job import Job, Status
from agent.service.notify import Notifier, socket_address, watchdog_seconds
from agent.service.status import ServiceStatus


@pytest.fixture
def abstract_socket():
    """A datagram socket bound to an abstract name, as NOTIFY_SOCKET writes it ('@name')."""
    name = f"neo-agent-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    yield f"@{name}", sock
    sock.close()


def test_abstract_names_and_paths_are_addresses_and_nothing_else_is():
    assert socket_address("@sd-notify") == b"\0sd-notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    for unusable in ("", "@", "relative/path", "vsock:2:1234"):
        assert socket_address(unusable) is None


def test_messages_reach_an_abstract_socket(abstract_socket):
    name, sock = abstract_socket
    notifier = Notifier(name, watchdog_s=2.0)
    assert notifier.ready("idle, 0 queued")
    assert sock.recv(4096) == b"READY=1\nSTATUS=idle, 0 queued"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping("stopping", extend_timeout_s=20)
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping\nEXTEND_TIMEOUT_USEC=20000000"
    notifier.status("job a\nWATCHDOG=1 in stage\tcompile")  # a newline must not start a new assignment
    assert sock.recv(4096) == b"STATUS=job a WATCHDOG=1 in stage compile"
    notifier.close()


def test_a_path_socket_works_too(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        Notifier(str(path)).stopping()
        assert sock.recv(4096) == b"STOPPING=1"


def test_without_notify_socket_every_call_is_a_no_op():
    environ = {"PATH": "/usr/bin"}
    notifier = Notifier.from_environment(environ)
    assert not notifier.enabled and notifier.watchdog_interval() is None
    assert not any([notifier.ready("x"), notifier.status("x"), notifier.watchdog(), notifier.stopping()])
    assert notifier._socket is None  # not even a socket was made
    assert environ == {"PATH": "/usr/bin"}


def test_from_environment_takes_the_variables_out_so_children_do_not_inherit_them(abstract_socket):
    name, sock = abstract_socket
    environ = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid()), "KEEP": "1"}
    notifier = Notifier.from_environment(environ)
    assert environ == {"KEEP": "1"}
    assert notifier.enabled and notifier.watchdog_interval() == 4.0
    assert notifier.watchdog() and sock.recv(4096) == b"WATCHDOG=1"


def test_a_watchdog_meant_for_another_process_is_not_ours(abstract_socket):
    name, sock = abstract_socket
    other = os.getpid() + 1
    environ = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(other)}
    notifier = Notifier.from_environment(environ)
    assert notifier.watchdog_interval() is None
    assert not notifier.watchdog()
    assert notifier.ready()  # the rest of the protocol still works
    assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "nonsense"}, None),
    ({"WATCHDOG_USEC": "500000"}, 0.5),
    ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "100"}, 0.5),
    ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "101"}, None),
    ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "x"}, None),
])
def test_watchdog_seconds(environ, expected):
    assert watchdog_seconds(environ, pid=100) == expected


def test_a_vanished_socket_is_logged_once_and_never_raises(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone"), watchdog_s=1.0)
    with caplog.at_level(logging.DEBUG, logger="agent.service.notify"):
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.watchdog()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "READY=1" in warnings[0].getMessage()


# --- the STATUS line ---------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def event(name: str, status: Status, stage: str = "", percent: float = 0.0, kind: str = "status") -> Event:
    return Event(kind, name, status.value, stage, percent)


def test_the_line_names_running_jobs_and_counts_queued_ones():
    sent: list[str] = []
    status = ServiceStatus(sent.append, min_interval_s=0)
    status.on_event(event("a", Status.STARTING))
    assert sent[-1] == "idle, 1 queued"
    status.on_event(event("b", Status.STARTING))
    status.on_event(event("a", Status.INPROGRESS, "fetch", 0))
    status.on_event(event("a", Status.INPROGRESS, "compile", 45, kind="progress"))
    assert sent[-1] == "job a in stage compile (45%), 1 queued"
    status.on_event(event("a", Status.STOPPING, "compile", 45))
    assert sent[-1] == "job a stopping in stage compile (45%), 1 queued"
    status.on_event(event("a", Status.STOPPED, "compile", 45))
    status.on_event(event("b", Status.STARTING, kind="deleted"))
    assert sent[-1] == "idle, 0 queued"


def test_the_line_is_rate_limited_and_the_held_back_one_goes_out_on_flush():
    sent: list[str] = []
    clock = FakeClock()
    status = ServiceStatus(sent.append, min_interval_s=1.0, clock=clock)
    status.on_event(event("a", Status.INPROGRESS, "compile", 15))
    for percent in (20, 25, 30):  # a burst of progress within the second
        clock.now += 0.1
        status.on_event(event("a", Status.INPROGRESS, "compile", percent, kind="progress"))
    assert sent == ["job a in stage compile (15%), 0 queued"]
    status.flush()
    assert len(sent) == 1  # still within the second
    clock.now += 1.0
    status.flush()
    assert sent[-1] == "job a in stage compile (30%), 0 queued"
    status.flush()
    clock.now += 5
    status.flush()
    assert len(sent) == 2  # an unchanged line is not sent again


def test_seed_take_and_freeze():
    sent: list[str] = []
    status = ServiceStatus(sent.append, min_interval_s=0)
    queued = Job(name="q", arn="arn", request={}, status=Status.STARTING)
    running = Job(name="r", arn="arn", request={}, status=Status.INPROGRESS, stage="verify", percent=50.0)
    status.seed([queued, running])
    assert status.take() == "job r in stage verify (50%), 1 queued"
    status.flush()
    assert sent == []  # taken means sent: READY=1 carried it
    status.freeze()
    status.on_event(event("r", Status.FAILED))
    assert sent == []  # the shutdown speaks for itself now
    assert status.line() == "idle, 1 queued"
