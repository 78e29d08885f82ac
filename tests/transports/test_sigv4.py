"""SigV4 on the HTTP endpoint: what boto3 and the AWS CLI sign passes, nothing else does.

This machine's tests never send traffic to a non-loopback address, so the endpoint is bound to
127.0.0.1 with `require_signature=True` forced: the same check a non-loopback bind turns on.
"""
from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import subprocess
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from agent.config import AgentConfig
from agent.service.agent import Agent
from agent.transports.http import HttpTransport
from agent.transports.sigv4 import InvalidSignatureException, SigV4Verifier
from tests.service.daemon_process import AWS_ENV, REPO, clean_env, kill_alarm, sagemaker_client  # noqa: F401

pytestmark = pytest.mark.usefixtures("kill_alarm")

KEY_ID, SECRET = AWS_ENV["AWS_ACCESS_KEY_ID"], AWS_ENV["AWS_SECRET_ACCESS_KEY"]
TARGET = "SageMaker.ListCompilationJobs"


@pytest.fixture
def signed_endpoint(tmp_path):
    agent = Agent(AgentConfig(state_dir=tmp_path / "state"))
    transport = HttpTransport(agent.api_for("http"), "127.0.0.1:0", credentials={KEY_ID: SECRET, "AKIDOTHER": "other"},
                              require_signature=True)
    transport.start()
    yield transport
    transport.stop(timeout=5)
    agent.store.close()


def error_code(call, **kwargs) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def signed(url: str, body: bytes, *, secret: str = SECRET, service: str = "sagemaker", when=None,
           headers: dict | None = None) -> AWSRequest:
    """A request signed the way botocore signs it (optionally at another time)."""
    all_headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": TARGET, **(headers or {})}
    request = AWSRequest(method="POST", url=url + "/", data=body, headers=all_headers)
    with mock.patch("botocore.auth.get_current_datetime",
                    return_value=when or datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)):
        SigV4Auth(Credentials(KEY_ID, secret), service, "us-east-1").add_auth(request)
    return request


def send(url: str, request_headers: dict, body: bytes) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/", body=body, headers=request_headers)
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    return response.status, answer


def test_boto3_signed_requests_pass(signed_endpoint):
    client = sagemaker_client(signed_endpoint.url)
    assert client.list_compilation_jobs()["CompilationJobSummaries"] == []
    # Another configured key works too; the region is the caller's.
    other = sagemaker_client(signed_endpoint.url, aws_access_key_id="AKIDOTHER", aws_secret_access_key="other",
                             region_name="eu-west-1")
    assert other.list_compilation_jobs()["CompilationJobSummaries"] == []


def test_wrong_secret_unknown_key_and_no_signature_are_403(signed_endpoint):
    wrong = sagemaker_client(signed_endpoint.url, aws_secret_access_key="not-the-secret")
    code, status, message = error_code(wrong.list_compilation_jobs)
    assert (code, status) == ("InvalidSignatureException", 403) and "does not match" in message
    stranger = sagemaker_client(signed_endpoint.url, aws_access_key_id="AKIDSTRANGER")
    assert error_code(stranger.list_compilation_jobs)[:2] == ("UnrecognizedClientException", 403)

    status, body = send(signed_endpoint.url, {"X-Amz-Target": TARGET, "Content-Type": "application/x-amz-json-1.1"}, b"{}")
    assert (status, body["__type"]) == (403, "MissingAuthenticationTokenException")


def test_an_old_or_future_date_is_refused(signed_endpoint):
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    old = signed(signed_endpoint.url, b"{}", when=now - datetime.timedelta(minutes=6))
    status, body = send(signed_endpoint.url, dict(old.headers.items()), b"{}")
    assert (status, body["__type"]) == (403, "InvalidSignatureException") and "Signature expired" in body["message"]
    future = signed(signed_endpoint.url, b"{}", when=now + datetime.timedelta(minutes=6))
    status, body = send(signed_endpoint.url, dict(future.headers.items()), b"{}")
    assert (status, body["__type"]) == (403, "InvalidSignatureException") and "not yet current" in body["message"]
    # Within the window either way is fine (clocks drift).
    recent = signed(signed_endpoint.url, b"{}", when=now - datetime.timedelta(minutes=4))
    assert send(signed_endpoint.url, dict(recent.headers.items()), b"{}")[0] == 200


def test_a_changed_body_or_target_breaks_the_signature(signed_endpoint):
    request = signed(signed_endpoint.url, b"{}")
    status, body = send(signed_endpoint.url, dict(request.headers.items()), b'{"MaxResults": 1}')
    assert (status, body["__type"]) == (403, "InvalidSignatureException")
    retargeted = dict(request.headers.items(), **{"X-Amz-Target": "SageMaker.DeleteCompilationJob"})
    assert send(signed_endpoint.url, retargeted, b"{}")[1]["__type"] == "InvalidSignatureException"
    # A content hash header must be the body's own hash, since the signer trusts it.
    lying = signed(signed_endpoint.url, b"{}", headers={"X-Amz-Content-SHA256": hashlib.sha256(b"{}").hexdigest()})
    assert send(signed_endpoint.url, dict(lying.headers.items()), b"{}")[0] == 200
    assert send(signed_endpoint.url, dict(lying.headers.items()), b"{ }")[1]["__type"] == "InvalidSignatureException"


def test_unreadable_or_misscoped_authorization(signed_endpoint):
    base = {"X-Amz-Target": TARGET, "X-Amz-Date": "20260101T000000Z"}
    for value in ("AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/sagemaker/aws4_request",
                  "AWS4-HMAC-SHA256 Credential=AKID/20260101, SignedHeaders=host, Signature=00",
                  "Basic dXNlcjpwYXNz"):
        status, body = send(signed_endpoint.url, dict(base, Authorization=value), b"{}")
        assert (status, body["__type"]) == (403, "IncompleteSignature"), value
    s3_signed = signed(signed_endpoint.url, b"{}", service="s3")
    status, body = send(signed_endpoint.url, dict(s3_signed.headers.items()), b"{}")
    assert (status, body["__type"]) == (403, "InvalidSignatureException") and "sagemaker" in body["message"]


def test_the_target_must_be_signed():
    request = AWSRequest(method="POST", url="http://127.0.0.1:1/", data=b"{}", headers={"Content-Type": "x"})
    SigV4Auth(Credentials(KEY_ID, SECRET), "sagemaker", "us-east-1").add_auth(request)
    headers = list(request.headers.items()) + [("X-Amz-Target", TARGET)]
    with pytest.raises(InvalidSignatureException, match="x-amz-target"):
        SigV4Verifier({KEY_ID: SECRET}).verify("POST", "/", headers, b"{}")


def test_the_aws_cli_signs_its_way_in(signed_endpoint):
    aws = REPO / ".venv" / "bin" / "aws"
    if not aws.exists():
        pytest.skip(f"the AWS CLI is not installed in the venv ({aws}); scripts/setup installs it")
    command = [str(aws), "sagemaker", "list-compilation-jobs", "--endpoint-url", signed_endpoint.url]
    ok = subprocess.run(command, capture_output=True, text=True, timeout=60, env=clean_env())
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"CompilationJobSummaries": []}, ok.stderr
    bad = subprocess.run(command, capture_output=True, text=True, timeout=60,
                         env=clean_env(AWS_SECRET_ACCESS_KEY="wrong"))
    assert bad.returncode == 255 and "(InvalidSignatureException)" in bad.stderr


def test_a_request_that_changes_something_is_accepted_once_per_signature(signed_endpoint):
    """SigV4 has no nonce: a Create, Stop or Delete captured off plain HTTP could be sent again
    as it was within the 5-minute window. The same signature arriving a second time is
    refused; a read is not (it tells a replayer nothing it did not see); and a request refused
    the first time is not remembered, so a client's retry, re-signed in the same second and
    so identical, still gets its own answer."""
    from tests.requests import job_request

    url = signed_endpoint.url

    def as_signed(operation: str, body: dict) -> tuple[dict, bytes]:
        data = json.dumps(body).encode()
        return dict(signed(url, data, headers={"X-Amz-Target": f"SageMaker.{operation}"}).headers.items()), data

    create = as_signed("CreateCompilationJob", job_request("once", "s3://b/m.tar.gz", "s3://b/out"))
    assert send(url, *create)[0] == 200
    status, body = send(url, *create)
    assert (status, body["__type"]) == (403, "InvalidSignatureException") and "already received" in body["message"]

    stop = as_signed("StopCompilationJob", {"CompilationJobName": "once"})
    assert send(url, *stop)[0] == 200
    assert send(url, *stop)[1]["__type"] == "InvalidSignatureException"

    missing = as_signed("DeleteCompilationJob", {"CompilationJobName": "no-such-job"})
    for _ in range(2):  # refused, so not remembered: the same answer twice
        status, body = send(url, *missing)
        assert (status, body["__type"]) == (400, "ResourceNotFound")

    describe = as_signed("DescribeCompilationJob", {"CompilationJobName": "once"})
    assert send(url, *describe)[0] == send(url, *describe)[0] == 200
    assert len(signed_endpoint.replays) == 2


def test_the_replay_guard_forgets_a_signature_when_it_expires_and_stays_bounded():
    from agent.transports.sigv4 import ReplayGuard, Signed

    now = [1000.0]
    guard = ReplayGuard(clock=lambda: now[0], limit=3)
    guard.claim(Signed("AKID", "a", expires=1300.0))
    with pytest.raises(InvalidSignatureException):
        guard.claim(Signed("AKID", "a", expires=1300.0))
    now[0] = 1301.0  # past its window: the date check refuses it now, and the guard lets it go
    guard.claim(Signed("AKID", "b", expires=1600.0))
    assert len(guard) == 1
    for signature in "cdef":
        guard.claim(Signed("AKID", signature, expires=1600.0))
    assert len(guard) == 3  # the oldest went first
