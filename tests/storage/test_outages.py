"""S3 going away and coming back, bytes damaged on the way, and presigned https input.

Each S3 test runs its own moto server process behind a fixed address (the `own_s3` fixture,
tests/restartable_s3.py), because the tests kill it and start a new one.
"""
from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time

import boto3
import pytest

from agent.demo.s3server import S3Server
from agent.errors import ClientError, ServerError
from agent.storage import digest
from agent.storage.retry import Patience
from agent.storage.transfer import download, upload
from tests.restartable_s3 import BUCKET as OWN_BUCKET
from tests.transports.iot_fixtures import make_pki

BUCKET = OWN_BUCKET


@pytest.mark.faults
def test_server_killed_mid_multipart_upload_then_restarted(own_s3, tmp_path):
    artifact = tmp_path / "model-ml_c5.tar.gz"
    artifact.write_bytes(os.urandom(40 << 20))  # five 8 MiB parts
    waits: list[str] = []
    restarted: list[threading.Thread] = []

    def on_part(done: int, total: int) -> None:
        if done == 2 and not restarted:  # two parts are in S3: kill the server under the upload
            own_s3.kill()
            restarted.append(own_s3.restart_later(3.0))

    stored = upload(artifact, f"s3://{BUCKET}/out/model-ml_c5.tar.gz", on_part=on_part,
                    patience=Patience.for_seconds(120, on_wait=waits.append))
    restarted[0].join()
    assert waits and "storage unreachable" in waits[0], "the wait was announced"
    assert (stored.size, stored.parts, stored.verified_by) == (40 << 20, 5, "sha256")
    back = download(f"s3://{BUCKET}/out/model-ml_c5.tar.gz", tmp_path / "back", max_bytes=1 << 30)
    assert digest(back.path) == digest(artifact), "the bytes in S3 are the artifact's bytes"


@pytest.mark.faults
def test_a_network_cut_mid_multipart_resumes_with_the_parts_s3_holds(own_s3, tmp_path):
    artifact = tmp_path / "model-ml_c5.tar.gz"
    artifact.write_bytes(os.urandom(40 << 20))
    progress: list[int] = []
    healed: list[threading.Thread] = []

    def on_part(done: int, total: int) -> None:
        progress.append(done)
        if done == 2 and not healed:
            own_s3.cut()
            healed.append(own_s3.heal_later(2.0))

    stored = upload(artifact, f"s3://{BUCKET}/out/model-ml_c5.tar.gz", on_part=on_part,
                    patience=Patience.for_seconds(120))
    healed[0].join()
    assert progress == [1, 2, 3, 4, 5], "after the cut S3 still held parts 1 and 2 (ListParts): not sent again"
    assert stored.verified_by == "sha256"
    back = download(f"s3://{BUCKET}/out/model-ml_c5.tar.gz", tmp_path / "back", max_bytes=1 << 30)
    assert digest(back.path) == digest(artifact)


@pytest.mark.faults
def test_a_short_outage_is_waited_out_by_a_single_put(own_s3, tmp_path):
    artifact = tmp_path / "small.tar.gz"
    artifact.write_bytes(os.urandom(1000))
    own_s3.kill()
    thread = own_s3.restart_later(2.0)
    stored = upload(artifact, f"s3://{BUCKET}/small.tar.gz", patience=Patience.for_seconds(60))
    thread.join()
    assert stored.verified_by == "sha256"


@pytest.mark.faults
def test_an_outage_past_the_deadline_fails_with_the_reason(own_s3, tmp_path):
    artifact = tmp_path / "a.tar.gz"
    artifact.write_bytes(b"x" * 1000)
    own_s3.kill()
    start = time.time()
    with pytest.raises(ServerError) as info:
        upload(artifact, f"s3://{BUCKET}/a.tar.gz", patience=Patience(deadline=start + 4, margin_s=0))
    assert info.value.keyword == "StorageUnreachable"
    assert "stayed unreachable" in info.value.detail and "time ran out" in info.value.detail
    assert time.time() - start < 10
    assert artifact.exists(), "the artifact stays on disk"


def test_presigned_https_input_from_a_tls_s3_server(tmp_path, monkeypatch):
    pki = make_pki(tmp_path / "pki")
    with S3Server(tls=(str(pki.server_cert), str(pki.server_key))) as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(pki.ca))  # boto3's way to trust a private CA
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))  # OpenSSL's, for the https download
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        body = os.urandom(3 << 20)
        client.put_object(Bucket=BUCKET, Key="in/model.tar.gz", Body=body)
        url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "in/model.tar.gz"},
                                            ExpiresIn=300)
        assert url.startswith("https://127.0.0.1:")
        fetched = download(url, tmp_path / "model.tar.gz", max_bytes=1 << 30)
        assert fetched.path.read_bytes() == body
        assert fetched.check == "md5-etag", "a single-part S3 object's ETag is its MD5"
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.stranger_cert))  # a CA that did not sign the server
        with pytest.raises(ServerError, match="StorageUnreachable.*CERTIFICATE_VERIFY_FAILED"):
            download(url, tmp_path / "again.tar.gz", max_bytes=1 << 30, patience=Patience.for_seconds(0))


# --- an https server that drops the connection, or lies about the bytes -----------------------

BODY = os.urandom(300_000)


class _Flaky(http.server.BaseHTTPRequestHandler):
    """First GET: headers for the whole body, then the connection dies after 100 kB.
    Later GETs honour Range and If-Match. /bad announces a wrong SHA-256."""

    requests: list[dict] = []

    def do_GET(self):
        type(self).requests.append(dict(self.headers))
        checksum = hashlib.sha256(b"other" if self.path == "/bad" else BODY).digest()
        etag = '"v1"'
        start = 0
        if self.headers.get("Range"):
            if self.headers.get("If-Match") != etag:
                self.send_response(412)
                self.end_headers()
                return
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
        else:
            self.send_response(200)
            import base64

            self.send_header("x-amz-checksum-sha256", base64.b64encode(checksum).decode())
        self.send_header("Content-Length", str(len(BODY) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.end_headers()
        if self.path == "/flaky" and len(type(self).requests) == 1:
            self.wfile.write(BODY[:100_000])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(BODY[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_url():
    _Flaky.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.faults
def test_a_dropped_download_resumes_with_range_and_is_checked(flaky_url, tmp_path):
    fetched = download(f"{flaky_url}/flaky", tmp_path / "m.tar.gz", max_bytes=1 << 20,
                       patience=Patience.for_seconds(30))
    assert fetched.path.read_bytes() == BODY
    assert fetched.check == "sha256"
    assert len(_Flaky.requests) == 2
    assert _Flaky.requests[1]["Range"] == "bytes=100000-" and _Flaky.requests[1]["If-Match"] == '"v1"'


def test_bytes_that_do_not_match_the_checksum_are_refused(flaky_url, tmp_path):
    with pytest.raises(ClientError) as info:
        download(f"{flaky_url}/bad", tmp_path / "m.tar.gz", max_bytes=1 << 20)
    assert info.value.keyword == "InputConfiguration" and "integrity check" in info.value.detail
    assert not list(tmp_path.iterdir()), "nothing half-checked is left behind"
