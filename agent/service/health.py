"""`neo-agent health`: can this device's agent take a job now? One line, exit 0 or 1, for monitoring.

Healthy is both of:
  - the daemon answers ListCompilationJobs on its HTTP endpoint (the configuration's `http`), in
    the SageMaker protocol, as a client would ask it; signed with the first key of
    http.credentials when there are any (the endpoint checks signatures off loopback);
  - its state directory is writable (a probe file is made and removed) and has min_free_mb
    free, below which a job that starts fails with InsufficientDiskSpace (unless clearing
    ended jobs' files frees enough; agent.runner.housekeeping).

It reads the configuration the daemon reads, so run it as the agent's user (or root) with the
same file, environment and options: `sudo -u neo-agent neo-agent health --state-dir
/var/lib/neo-agent`. A Nagios check, a systemd timer and a container probe read the exit code;
the line says what is fine and what is wrong. Never a traceback: whatever goes wrong is a line.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from agent.config import AgentConfig
from agent.errors import ConfigError

DEFAULT_TIMEOUT_S = 5.0
CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET = "SageMaker.ListCompilationJobs"
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # a wildcard bind is reached on loopback


def check(config: AgentConfig, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, one line saying what is fine and what is wrong)."""
    results = [_endpoint(config, timeout), _state_dir(config)]
    healthy = all(ok for ok, _ in results)
    wrong = [text for ok, text in results if not ok]
    fine = [text for ok, text in results if ok]
    if healthy:
        return True, "OK: " + "; ".join(fine)
    return False, "FAILED: " + "; ".join(wrong) + (f" (fine: {'; '.join(fine)})" if fine else "")


def _endpoint(config: AgentConfig, timeout: float) -> tuple[bool, str]:
    from agent.transports.http import is_loopback, parse_address

    if not config.http:
        return False, "the HTTP endpoint is off (http.endpoint is empty), so there is nothing to ask"
    try:
        host, port = parse_address(config.http)
    except ConfigError as exc:
        return False, str(exc)
    if port == 0:
        return False, f"http.endpoint {config.http} has port 0 (picked at start); name the port to check it"
    host = WILDCARDS.get(host, host)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = f"http://{netloc}"
    if not config.http_credentials and not is_loopback(host):
        return False, f"{url} checks signatures and http.credentials holds no key to sign with"
    body = json.dumps({"MaxResults": 1}).encode()
    headers = {"Host": netloc, "Content-Type": CONTENT_TYPE, "X-Amz-Target": TARGET}
    if config.http_credentials:
        from agent.transports.sigv4 import sign

        key_id, secret = next(iter(config.http_credentials.items()))
        headers = sign(url + "/", headers, body, key_id, secret, config.region)
    began = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("POST", "/", body=body, headers=headers)
        response = connection.getresponse()
        status, data = response.status, response.read()
    except ConnectionRefusedError:
        return False, f"nothing answers on {url} (connection refused): is neo-agent running?"
    except (socket.timeout, TimeoutError):
        return False, f"{url} did not answer within {timeout:g} s"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{url}: {type(exc).__name__}: {exc}"
    finally:
        connection.close()
    elapsed_ms = (time.monotonic() - began) * 1000
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if status == 200 and isinstance(answer, dict) and "CompilationJobSummaries" in answer:
        return True, f"{url} answered ListCompilationJobs in {elapsed_ms:.0f} ms"
    if isinstance(answer, dict) and "__type" in answer:
        return False, f"{url} refused ListCompilationJobs: {status} {answer['__type']}: {answer.get('message', '')}"
    return False, f"{url} answered {status} with something that is not the agent's API"


def _state_dir(config: AgentConfig) -> tuple[bool, str]:
    state_dir = Path(config.state_dir)
    if not state_dir.is_dir():
        return False, f"state directory {state_dir} does not exist"
    try:
        handle, probe = tempfile.mkstemp(prefix=".health-", dir=state_dir)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        return False, f"state directory {state_dir} is not writable ({exc.strerror or exc})"
    free_mb = shutil.disk_usage(state_dir).free // 2**20
    if free_mb < config.min_free_mb:
        return False, (f"state directory {state_dir} has {free_mb} MiB free, below min_free_mb "
                       f"{config.min_free_mb}: a job that starts now may fail with InsufficientDiskSpace")
    return True, f"state directory {state_dir} is writable with {free_mb} MiB free (min_free_mb {config.min_free_mb})"
