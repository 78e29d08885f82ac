"""The HTTP endpoint on the wire: SageMaker's JSON 1.1 protocol, byte for byte where it matters.

An HttpTransport on a free loopback port over a real Agent whose runner is not started (so a
created job stays STARTING and nothing compiles), spoken to with http.client.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid

import pytest

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.service.agent import Agent
from agent.transports import http as http_transport
from agent.transports.http import MAX_BODY_BYTES, HttpTransport, is_loopback, parse_address
from tests.service.daemon_process import job_request, kill_alarm  # noqa: F401 - the fixture
from tests.transports.iot_fixtures import pki  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("kill_alarm")

JSON_TYPE = "application/x-amz-json-1.1"


@pytest.fixture
def agent(tmp_path):
    agent = Agent(AgentConfig(state_dir=tmp_path / "state"))
    yield agent
    agent.store.close()


@pytest.fixture
def endpoint(agent):
    transport = HttpTransport(agent.api_for("http"), "127.0.0.1:0")
    transport.start()
    yield transport
    transport.stop(timeout=5)


def send(transport, body=b"{}", target="SageMaker.ListCompilationJobs", method="POST", path="/", headers=None):
    """One raw request; (status, headers, parsed JSON body or None)."""
    host, port = transport.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    all_headers = {"Content-Type": JSON_TYPE}
    if target is not None:
        all_headers["X-Amz-Target"] = target
    all_headers.update(headers or {})
    conn.request(method, path, body=body, headers=all_headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.headers, (json.loads(data) if data else None)


def assert_error(answer, status: int, code: str) -> str:
    got_status, headers, body = answer
    assert (got_status, body["__type"]) == (status, code), body
    assert headers["x-amzn-ErrorType"] == code
    assert headers["Content-Type"] == JSON_TYPE
    uuid.UUID(headers["x-amzn-RequestId"])
    return body["message"]


def test_an_operation_answers_200_with_json_and_a_request_id(endpoint):
    status, headers, body = send(endpoint)
    assert (status, body) == (200, {"CompilationJobSummaries": []})
    assert headers["Content-Type"] == JSON_TYPE and "x-amzn-ErrorType" not in headers
    uuid.UUID(headers["x-amzn-RequestId"])
    _, again, _ = send(endpoint)
    assert again["x-amzn-RequestId"] != headers["x-amzn-RequestId"]  # fresh on every answer


def test_times_are_epoch_seconds_and_jobs_record_the_http_channel(endpoint, agent):
    request = job_request("wire", "file:///m/model.tar.gz", "file:///out")
    assert send(endpoint, json.dumps(request).encode(), "SageMaker.CreateCompilationJob")[0] == 200
    status, _, body = send(endpoint, b'{"CompilationJobName": "wire"}', "SageMaker.DescribeCompilationJob")
    assert status == 200 and body["CompilationJobStatus"] == "STARTING"
    assert isinstance(body["CreationTime"], float) and body["CreationTime"] > 1.7e9
    assert agent.store.get("wire").channel == "http"


def test_malformed_json_is_a_serialization_exception(endpoint):
    assert "not valid JSON" in assert_error(send(endpoint, b'{"MaxResults": '), 400, "SerializationException")
    assert_error(send(endpoint, b"[1, 2]"), 400, "SerializationException")
    assert_error(send(endpoint, b"\xff\xfe"), 400, "SerializationException")


def test_missing_or_unknown_target_is_an_unknown_operation(endpoint):
    assert "X-Amz-Target" in assert_error(send(endpoint, target=None), 400, "UnknownOperationException")
    assert_error(send(endpoint, target="SageMaker.CreateTrainingJob"), 400, "UnknownOperationException")
    assert_error(send(endpoint, target="Other.ListCompilationJobs"), 400, "UnknownOperationException")


def test_the_api_errors_keep_their_code_and_status(endpoint):
    message = assert_error(send(endpoint, b'{"CompilationJobName": "nobody"}', "SageMaker.DescribeCompilationJob"),
                           400, "ResourceNotFound")
    assert "nobody" in message
    assert_error(send(endpoint, b'{"MaxResults": 0}'), 400, "ValidationException")


def test_a_body_over_the_limit_is_refused_with_413_unread(endpoint):
    message = assert_error(send(endpoint, b" " * (MAX_BODY_BYTES + 1)), 413, "RequestTooLargeException")
    assert str(MAX_BODY_BYTES) in message
    # A body claiming to be huge is refused on its Content-Length alone, before any of it is read.
    assert_error(send(endpoint, b"{}", headers={"Content-Length": str(50 * MAX_BODY_BYTES)}),
                 413, "RequestTooLargeException")
    # Exactly at the limit is fine.
    assert send(endpoint, b"{}" + b" " * (MAX_BODY_BYTES - 2))[0] == 200


def test_only_post_slash_is_served(endpoint):
    status, headers, _ = send(endpoint, method="GET", body=None)
    assert status == 405 and headers["Allow"] == "POST"
    assert_error(send(endpoint, method="PUT"), 405, "UnknownOperationException")
    assert_error(send(endpoint, path="/other"), 404, "UnknownOperationException")
    status, headers, body = send(endpoint, method="HEAD", body=None)
    assert (status, body) == (405, None) and headers["x-amzn-ErrorType"] == "UnknownOperationException"


def test_a_body_without_content_length_is_refused(endpoint):
    status, headers, body = send(endpoint, body=iter([b"{}"]), headers={"Transfer-Encoding": "chunked"})
    assert (status, body["__type"]) == (411, "SerializationException")


def test_loopback_endpoint_refuses_a_foreign_host_header(endpoint):
    """A web page that rebinds its DNS name to 127.0.0.1 still sends its own name as Host."""
    assert_error(send(endpoint, headers={"Host": "attacker.example:8573"}), 403, "AccessDeniedException")
    assert send(endpoint, headers={"Host": "localhost:8573"})[0] == 200


def test_an_unexpected_failure_is_a_500_internal_failure(tmp_path):
    class Broken:
        def call(self, operation, body):
            raise RuntimeError("boom")

    transport = HttpTransport(Broken(), "127.0.0.1:0")
    transport.start()
    try:
        message = assert_error(send(transport), 500, "InternalFailure")
        assert "boom" not in message and "log" in message
    finally:
        transport.stop(timeout=5)


def test_stop_closes_the_listener_and_is_safe_twice(agent):
    transport = HttpTransport(agent.api_for("http"), "127.0.0.1:0")
    transport.start()
    host, port = transport.url.removeprefix("http://").rsplit(":", 1)
    transport.stop(timeout=5)
    transport.stop(timeout=5)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()


# --- many and slow clients -------------------------------------------------------------------
@pytest.fixture
def small_endpoint(agent, monkeypatch):
    """An endpoint serving at most 4 connections at once, each with 2 s to send its request."""
    monkeypatch.setattr(http_transport, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(http_transport, "REQUEST_DEADLINE_S", 2.0)
    transport = HttpTransport(agent.api_for("http"), "127.0.0.1:0")
    transport.start()
    yield transport
    transport.stop(timeout=5)


def _address(transport) -> tuple[str, int]:
    host, port = transport.url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def test_idle_connections_hold_at_most_the_cap_of_threads_and_are_cut_at_the_deadline(small_endpoint):
    threads_before = threading.active_count()
    idle = [socket.create_connection(_address(small_endpoint), timeout=10) for _ in range(8)]
    try:
        time.sleep(0.5)
        assert threading.active_count() - threads_before <= 4  # 8 idle clients, 4 handler threads
        started = time.monotonic()
        status, _, body = send(small_endpoint)  # waits its turn: the idle ones are cut, 4 every 2 s
        assert (status, body) == (200, {"CompilationJobSummaries": []})
        assert 2 <= time.monotonic() - started < 9
        assert idle[0].recv(1) == b""  # the server closed the first idle connection
    finally:
        for sock in idle:
            sock.close()


def test_a_client_trickling_its_request_is_cut_at_the_deadline(small_endpoint):
    sock = socket.create_connection(_address(small_endpoint), timeout=10)
    started = time.monotonic()
    try:
        request = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Amz-Target: SageMaker.ListCompilationJobs\r\n"
        for byte in request:
            sock.sendall(bytes([byte]))  # a byte every 0.1 s: never REQUEST_TIMEOUT_S of silence
            time.sleep(0.1)
            if time.monotonic() - started > 10:
                break
        assert sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        pass  # cut while sending: as good
    assert time.monotonic() - started < 5  # cut at its 2 s deadline, not after the whole request


# --- HTTPS ----------------------------------------------------------------------------------
@pytest.fixture
def https_endpoint(agent, pki, monkeypatch):
    """The endpoint with a certificate for localhost/127.0.0.1 from the test CA; 2 s deadlines."""
    monkeypatch.setattr(http_transport, "REQUEST_DEADLINE_S", 2.0)
    transport = HttpTransport(agent.api_for("http"), "127.0.0.1:0", tls_cert=str(pki.server_cert),
                              tls_key=str(pki.server_key))
    transport.start()
    yield transport
    transport.stop(timeout=5)


def test_with_a_certificate_the_endpoint_speaks_https_to_boto3_and_nothing_else(https_endpoint, pki):
    import boto3
    import botocore.config
    import botocore.exceptions

    assert https_endpoint.url.startswith("https://127.0.0.1:")

    def client(verify):
        return boto3.client("sagemaker", endpoint_url=https_endpoint.url, region_name="us-east-1", verify=verify,
                            aws_access_key_id="x", aws_secret_access_key="x",
                            config=botocore.config.Config(retries={"max_attempts": 1}))

    assert client(str(pki.ca)).list_compilation_jobs()["CompilationJobSummaries"] == []
    with pytest.raises(botocore.exceptions.SSLError):  # a caller that does not trust the CA
        client(True).list_compilation_jobs()
    host, port = _address(https_endpoint)
    with pytest.raises((http.client.HTTPException, OSError)):  # plain HTTP gets no answer
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("POST", "/", body=b"{}", headers={"X-Amz-Target": "SageMaker.ListCompilationJobs"})
        conn.getresponse()


def test_a_client_that_never_finishes_the_tls_handshake_is_cut_at_the_deadline(https_endpoint):
    sock = socket.create_connection(_address(https_endpoint), timeout=10)
    started = time.monotonic()
    try:
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and then nothing
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert time.monotonic() - started < 6  # the 2 s deadline (polled every 0.5 s), not the 30 s read timeout


def test_an_https_endpoint_needs_a_loadable_certificate_and_key(agent, pki, tmp_path):
    with pytest.raises(ConfigError, match=r"http_tls_cert \(NEO_AGENT_HTTP_TLS_CERT\): cannot load"):
        HttpTransport(agent.api_for("http"), "127.0.0.1:0", tls_cert=str(pki.ca), tls_key=str(pki.client_key))


# --- configuration --------------------------------------------------------------------------
def test_addresses_parse_or_fail_naming_the_key():
    assert parse_address("127.0.0.1:8573") == ("127.0.0.1", 8573)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    assert parse_address("localhost:0") == ("localhost", 0)
    for bad in ("8573", "127.0.0.1", ":8573", "host:port", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match="NEO_AGENT_HTTP"):
            parse_address(bad)
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")


def test_a_non_loopback_address_without_credentials_is_refused_before_binding(agent):
    with pytest.raises(ConfigError, match="NEO_AGENT_HTTP_CREDENTIALS"):
        HttpTransport(agent.api_for("http"), "0.0.0.0:8573")
    with pytest.raises(ConfigError, match="NEO_AGENT_HTTP_CREDENTIALS"):
        HttpTransport(agent.api_for("http"), "127.0.0.1:0", require_signature=True)
    # With keys it is accepted; it is not started here, so nothing listens beyond loopback.
    assert HttpTransport(agent.api_for("http"), "0.0.0.0:8573", credentials={"AKID": "s"}).require_signature


def test_a_port_in_use_is_a_config_error(endpoint, agent):
    taken = endpoint.url.removeprefix("http://")
    with pytest.raises(ConfigError, match="cannot listen"):
        HttpTransport(agent.api_for("http"), taken).start()
