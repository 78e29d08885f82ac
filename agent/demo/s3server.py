"""An S3-protocol server in its own process, for the demo and the tests: moto's server mode.

The agent talks to it through boto3 exactly as it talks to AWS; only the endpoint differs
(AWS_ENDPOINT_URL_S3, which boto3 itself honours).
"""
from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

START_TIMEOUT_S = 30.0


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port that this process has not handed out before (the kernel can give
    one port to two binds in a row once the first socket closes, and a server and its relay
    chosen one after the other must not collide)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class S3Server:
    """`with S3Server() as s3: s3.endpoint_url` -> a running moto server on loopback."""

    def __init__(self, port: int | None = None, log_path: str | None = None,
                 tls: tuple[str, str] | None = None):
        """`tls`: (certificate, key) files to serve https:// instead of http://."""
        self.port = port or free_port()
        self.tls = tls
        self.endpoint_url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "S3Server":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port),
             *(["-c", self.tls[0], "-k", self.tls[1]] if self.tls else [])],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode} before it was ready")
            try:
                # Only "is it up?": whether its certificate is trusted is the client's question.
                context = ssl._create_unverified_context() if self.tls else None
                urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=1, context=context).close()
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint_url} within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def env(self) -> dict[str, str]:
        """The environment a boto3 client needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
