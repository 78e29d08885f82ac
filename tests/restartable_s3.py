"""An S3 server the tests can kill and start again, behind a fixed address.

The agent is pointed at a TCP relay on a fixed loopback port; behind it runs a moto server
process. `kill()` SIGTERMs that process (connections in flight break, new ones are refused by
the relay: an outage). `restart()` starts a new moto process, makes the bucket again (moto keeps
its state in memory, so the new process has lost the bucket and any multipart upload, as a store
that lost them would have) and only then lets the relay through: the agent never meets a
half-restored server, so the tests do not depend on who is faster.
"""
from __future__ import annotations

import socket
import threading

import boto3

from agent.demo.s3server import S3Server, free_port

BUCKET = "own-bucket"


class RestartableS3:
    def __init__(self, log_path: str):
        self.log_path = log_path
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._backend: S3Server | None = None
        self._target: int | None = None
        self._cut_from: int | None = None
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    # --- the server behind the relay -----------------------------------------------------
    def restart(self) -> None:
        backend = S3Server(log_path=self.log_path).start()
        boto3.client("s3", endpoint_url=backend.endpoint_url).create_bucket(Bucket=BUCKET)
        self._backend, self._target = backend, backend.port

    def kill(self) -> None:
        self._target = None
        if self._backend is not None:
            self._backend.stop()
            self._backend = None

    def cut(self) -> None:
        """The network fails, the server lives on: open connections break, new ones are refused."""
        self._cut_from, self._target = self._target, None
        for sock in list(self._open):
            _close(sock)

    def heal(self) -> None:
        self._target = self._cut_from

    def heal_later(self, delay_s: float) -> threading.Thread:
        timer = threading.Timer(delay_s, self.heal)
        timer.start()
        return timer

    def restart_later(self, delay_s: float) -> threading.Thread:
        timer = threading.Timer(delay_s, self.restart)
        timer.start()
        return timer

    def close(self) -> None:
        self._closed = True
        self.kill()
        self._listener.close()

    def env(self) -> dict[str, str]:
        return {**S3Server().env(), "AWS_ENDPOINT_URL_S3": self.endpoint_url}

    # --- the relay ---------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            target = self._target
            if target is None:
                client.close()  # the server is down: the connection opens and dies at once
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", target))
            except OSError:
                client.close()
                continue
            self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                self._open.discard(sock)
                _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
