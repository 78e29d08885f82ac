"""A real Mosquitto broker process for tests, on a free loopback port.

Independent of the agent's MQTT code (it takes only the port helper from `agent`), so every
MQTT-based test can use it: the plain MQTT transport, the AWS IoT Core and IoT Jobs stand-ins
(which add a TLS listener through `extra_config`).

The broker keeps its persistence database in its own directory and saves it after every
change (subscription, queued message), so persistent sessions (subscriptions and queued QoS 1 messages) survive `kill()` (SIGKILL,
no chance to save at exit) followed by `start()` on the same port: what a crashed and
restarted broker does to its clients.

    with Mosquitto(tmp_path / "broker") as broker:
        client.connect("127.0.0.1", broker.port)
        broker.kill(); broker.start()          # same port, same sessions

Fixtures: `mosquitto` (one broker per test). Import it into a test module:
`from tests.mosquitto import mosquitto  # noqa: F401` (a fixture used by name).
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agent.demo.s3server import free_port  # tests import it from here too

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
AUTOSAVE_CHANGES = 1  # save the persistence database after every change, so SIGKILL loses nothing


def mosquitto_binary() -> str | None:
    """The broker's path: on PATH, or Debian's /usr/sbin (not on a normal user's PATH)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


class Mosquitto:
    """One broker process. `start()` again after `kill()` or `stop()` reuses port and data.

    `extra_config` lines are appended to the generated file, e.g. a TLS listener:
        ["listener 8883 127.0.0.1", "cafile /x/ca.pem", "certfile ...", "keyfile ...",
         "require_certificate true"]
    Anonymous clients are allowed on the plain loopback listener (the default listener
    settings apply to every listener unless `per_listener_settings true` is given).
    """

    def __init__(self, directory: Path, *, port: int | None = None, extra_config: list[str] = ()):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.extra_config = list(extra_config)
        self.config_path = self.directory / "mosquitto.conf"
        self.log_path = self.directory / "mosquitto.log"
        self.data_dir = self.directory / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.process: subprocess.Popen | None = None
        self._write_config()

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            # Run as root, mosquitto drops to user "mosquitto", who cannot write in a test's
            # private tmp directory; naming the current user keeps it as is (no effect otherwise).
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            f"autosave_interval {AUTOSAVE_CHANGES}",
            "autosave_on_changes true",
            "max_queued_messages 10000",
            # Nagle off on the broker side too: without it each answer waits ~40 ms for the
            # delayed ACK of the PUBACK sent just before it on the same connection.
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    # --- life cycle ---------------------------------------------------------------------
    def start(self) -> "Mosquitto":
        binary = mosquitto_binary()
        if binary is None:
            pytest.skip("mosquitto is not installed (.ci/run installs it: apt-get install mosquitto)")
        if self.running:
            return self
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {err}\n{self.log_tail()}")
            if self._accepts():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {START_TIMEOUT_S} s\n{self.log_tail()}")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the broker dies without saving, as in a crash or power cut."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (the broker saves its persistence database)."""
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT_S)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None
        # The port must be free again before a restart binds it.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self._accepts() and time.monotonic() < deadline:
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def mosquitto(tmp_path):
    """A fresh broker for one test (killed at the end, whatever the test did to it)."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.kill()
