"""Transfers against a real S3-protocol server (moto, in its own process) and a real HTTP server."""
from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.stub import Stubber

from agent.demo.s3server import free_port
from agent.errors import ClientError, ServerError
from agent.storage.retry import Patience
from agent.storage.transfer import download, upload


def NO_PATIENCE() -> Patience:  # noqa: N802 - reads as a constant at the call
    """An outage fails the transfer at once: these tests are about the error, not the wait."""
    return Patience.for_seconds(0)


@pytest.fixture
def payload(tmp_path) -> Path:
    path = tmp_path / "model.tar.gz"
    path.write_bytes(os.urandom(100_000))
    return path


def test_s3_round_trip(s3_bucket, payload, tmp_path):
    uri = f"s3://{s3_bucket}/jobs/j1/model.tar.gz"
    stored = upload(payload, uri)
    assert (stored.uri, stored.size, stored.parts) == (uri, 100_000, 1)
    fetched = download(uri, tmp_path / "down" / "model.tar.gz", max_bytes=1 << 20)
    dest = fetched.path
    assert dest.read_bytes() == payload.read_bytes()
    assert fetched.check == "sha256", "the agent's own uploads carry a SHA-256 that downloads check"
    assert [p.name for p in dest.parent.iterdir()] == ["model.tar.gz"], "no .part file is left"


@pytest.mark.parametrize("size", [1000, 20 << 20])  # one PUT, and a multipart upload
def test_kms_key_reaches_s3(s3_bucket, s3_env, tmp_path, size):
    key_id = boto3.client("kms", endpoint_url=s3_env.endpoint_url).create_key()["KeyMetadata"]["KeyId"]
    path = tmp_path / "artifact"
    path.write_bytes(os.urandom(size))
    stored = upload(path, f"s3://{s3_bucket}/out/artifact", kms_key_id=key_id)
    assert stored.verified_by == "sha256"
    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key="out/artifact")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert key_id in head["SSEKMSKeyId"]
    assert head["ContentLength"] == size


# --- the check after an upload (agent.storage.s3._verify) ----------------------------------------

def replaced_before_the_check(client, bucket: str, key: str, body: bytes) -> None:
    """Another writer puts `body` at the key just before `client` asks S3 what it holds there."""
    other = boto3.client("s3")

    def replace(params, **_):
        other.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256")

    client.meta.events.register("before-parameter-build.s3.HeadObject", replace)


def keeping_no_checksum(client) -> list[dict]:
    """`client` answers as an S3-compatible store that keeps no checksums: HeadObject without
    ChecksumSHA256. Returns the GetObject calls it makes, as they happen."""
    reads: list[dict] = []
    client.meta.events.register("after-call.s3.HeadObject", lambda parsed, **_: parsed.pop("ChecksumSHA256", None))
    client.meta.events.register("before-parameter-build.s3.GetObject", lambda params, **_: reads.append(params))
    return reads


@pytest.mark.parametrize("body, words", [
    (b"y" * 100_000, "S3's SHA-256 "),  # the same size, other bytes
    (b"y" * 99_999, "S3 holds 99999 bytes after the upload, the artifact has 100000"),
])
def test_an_object_s3_does_not_hold_as_uploaded_is_a_storage_error(s3_bucket, payload, body, words):
    client = boto3.client("s3")
    replaced_before_the_check(client, s3_bucket, "out/m.tar.gz", body)
    with pytest.raises(ServerError) as info:
        upload(payload, f"s3://{s3_bucket}/out/m.tar.gz", client=client, patience=NO_PATIENCE())
    assert info.value.keyword == "StorageError" and words in info.value.detail
    assert info.value.detail.endswith(f"Bucket: {s3_bucket}, Key: out/m.tar.gz")


def test_a_store_that_keeps_no_checksum_has_the_object_read_back(s3_bucket, payload):
    client = boto3.client("s3")
    reads = keeping_no_checksum(client)
    stored = upload(payload, f"s3://{s3_bucket}/out/m.tar.gz", client=client)
    assert (stored.verified_by, stored.size) == ("read-back", 100_000)
    assert [(r["Bucket"], r["Key"]) for r in reads] == [(s3_bucket, "out/m.tar.gz")], "read back once"


def test_bytes_read_back_that_differ_are_a_storage_error(s3_bucket, payload):
    client = boto3.client("s3")
    reads = keeping_no_checksum(client)
    replaced_before_the_check(client, s3_bucket, "out/m.tar.gz", b"y" * 100_000)  # the size still matches
    with pytest.raises(ServerError) as info:
        upload(payload, f"s3://{s3_bucket}/out/m.tar.gz", client=client, patience=NO_PATIENCE())
    assert info.value.keyword == "StorageError"
    assert info.value.detail.startswith("the object read back from S3 differs from the artifact")
    assert len(reads) == 1


def test_missing_object_in_neo_words(s3_bucket, tmp_path):
    with pytest.raises(ClientError) as info:
        download(f"s3://{s3_bucket}/no/such.tar.gz", tmp_path / "m", max_bytes=1000)
    assert info.value.reason == (
        f"ClientError: InputConfiguration: S3 object does not exist. Bucket: {s3_bucket}, Key: no/such.tar.gz")
    assert isinstance(info.value.__cause__, botocore.exceptions.ClientError)
    assert not list(tmp_path.iterdir())


def test_missing_bucket(s3_env, tmp_path):
    with pytest.raises(ClientError) as info:
        download("s3://no-such-bucket-here/model.tar.gz", tmp_path / "m", max_bytes=1000)
    assert info.value.reason == "ClientError: InputConfiguration: S3 bucket does not exist. Bucket: no-such-bucket-here"


def test_missing_output_bucket(s3_env, payload):
    with pytest.raises(ClientError) as info:
        upload(payload, "s3://no-such-bucket-here/out/model.tar.gz")
    assert info.value.reason == (
        "ClientError: OutputConfiguration: S3 bucket does not exist. Bucket: no-such-bucket-here")


def test_prefix_is_not_an_object(s3_bucket, payload, tmp_path):
    with pytest.raises(ClientError, match="OutputConfiguration: .*not a prefix"):
        upload(payload, f"s3://{s3_bucket}/out/")
    with pytest.raises(ClientError, match="InputConfiguration: .*not a prefix"):
        download(f"s3://{s3_bucket}/in/", tmp_path / "m", max_bytes=10)


def test_access_denied(s3_env, monkeypatch, tmp_path):
    client = boto3.client("s3")
    stub = Stubber(client)
    stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
    stub.activate()
    with pytest.raises(ClientError) as info:
        download("s3://b-denied/k", tmp_path / "m", max_bytes=10, client=client)
    assert info.value.reason == (
        "ClientError: ClientPermission: Access denied by S3 (AccessDenied). Bucket: b-denied, Key: k")


def test_size_limit_on_s3(s3_bucket, payload, tmp_path):
    upload(payload, f"s3://{s3_bucket}/big")
    with pytest.raises(ClientError) as info:
        download(f"s3://{s3_bucket}/big", tmp_path / "down" / "m", max_bytes=99_999)
    assert info.value.keyword == "ModelSizeTooBig" and "100000 bytes" in info.value.detail
    assert not list((tmp_path / "down").iterdir()), "neither the file nor its .part remains"


def test_unreachable_endpoint(s3_env, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ServerError) as info:
        download("s3://bucket/key", tmp_path / "m", max_bytes=10, patience=NO_PATIENCE())
    assert info.value.keyword == "StorageUnreachable"


def test_no_credentials(s3_env, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ServerError) as info:
        download("s3://bucket/key", tmp_path / "m", max_bytes=10)
    assert info.value.keyword == "StorageCredentials"


def test_presigned_url_download(s3_bucket, payload, tmp_path):
    upload(payload, f"s3://{s3_bucket}/m.tar.gz")
    url = boto3.client("s3").generate_presigned_url(
        "get_object", Params={"Bucket": s3_bucket, "Key": "m.tar.gz"}, ExpiresIn=300)
    assert url.startswith("http://127.0.0.1:")  # loopback http is accepted, as the uri module says
    assert download(url, tmp_path / "m", max_bytes=1 << 20).path.read_bytes() == payload.read_bytes()
    with pytest.raises(ClientError, match="ModelSizeTooBig"):
        download(url, tmp_path / "m2", max_bytes=1000)


def test_file_round_trip(payload, tmp_path):
    uri = f"file://{tmp_path}/out/deep/model.tar.gz"
    upload(payload, uri)
    assert (tmp_path / "out" / "deep" / "model.tar.gz").read_bytes() == payload.read_bytes()
    assert download(uri, tmp_path / "back", max_bytes=1 << 20).path.read_bytes() == payload.read_bytes()
    assert not list((tmp_path / "out" / "deep").glob(".*"))


def test_file_errors(payload, tmp_path):
    with pytest.raises(ClientError, match="InputConfiguration: File does not exist"):
        download(f"file://{tmp_path}/missing", tmp_path / "m", max_bytes=10)
    with pytest.raises(ClientError, match="ModelSizeTooBig"):
        download(f"file://{payload}", tmp_path / "m", max_bytes=10)
    with pytest.raises(ClientError, match="OutputConfiguration: KmsKeyId applies only to s3"):
        upload(payload, f"file://{tmp_path}/o", kms_key_id="alias/k")
    with pytest.raises(ClientError, match="OutputConfiguration: .*s3:// or file://"):
        upload(payload, "https://example.com/o")


# --- https against a small local server -------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = int(self.path.split("/")[1].split("?")[0])
        if status in (301, 302):
            self.send_response(status)
            self.send_header("Location", "http://example.com/model.tar.gz")
            self.end_headers()
            return
        body = b"z" * 5000
        self.send_response(status)
        if self.path.startswith("/200/unannounced"):
            self.send_header("Connection", "close")  # no Content-Length: the size shows only while reading
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status, kind, keyword", [
    (403, ClientError, "ClientPermission"),
    (404, ClientError, "InputConfiguration"),
    (400, ClientError, "InputConfiguration"),
    (503, ServerError, "StorageUnreachable"),
])
def test_http_status_mapping(http_url, tmp_path, status, kind, keyword):
    with pytest.raises(kind) as info:
        download(f"{http_url}/{status}/m.tar.gz?X-Amz-Signature=secret", tmp_path / "m", max_bytes=1 << 20,
                 patience=NO_PATIENCE())
    assert info.value.keyword == keyword
    assert "secret" not in info.value.reason


def test_http_size_limit_with_and_without_content_length(http_url, tmp_path):
    assert download(f"{http_url}/200/ok", tmp_path / "m", max_bytes=5000).size == 5000
    for path in ("/200/announced", "/200/unannounced"):
        with pytest.raises(ClientError, match="ModelSizeTooBig"):
            download(http_url + path, tmp_path / "m2", max_bytes=4999)


def test_redirect_to_remote_http_is_refused(http_url, tmp_path):
    with pytest.raises(ClientError, match="loopback"):
        download(f"{http_url}/302/m", tmp_path / "m", max_bytes=1 << 20)


def test_http_unreachable(tmp_path):
    with pytest.raises(ServerError, match="StorageUnreachable"):
        download(f"http://127.0.0.1:{free_port()}/m", tmp_path / "m", max_bytes=10, patience=NO_PATIENCE())
