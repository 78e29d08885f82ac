"""moto's S3 server with one answer made AWS's: UploadPart and CompleteMultipartUpload on an
upload S3 does not know (aborted, completed, or lost).

AWS answers 404 NoSuchUpload. moto 5.2 looks the upload up with a bare dict index and answers
500 InternalError (a KeyError), which botocore retries and the agent takes for an outage; its
ListParts and AbortMultipartUpload already answer NoSuchUpload. So this server wraps those two
backend methods and nothing else, in a server process of its own:

    python -m tests.storage.aws_like_s3 -H 127.0.0.1 -p PORT      (moto.server's arguments)

The agent, boto3 and botocore under test are untouched; they meet the answer over HTTP.
"""
from __future__ import annotations

import functools
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest

from agent.demo.s3server import START_TIMEOUT_S, S3Server

BUCKET = "forgetful-bucket"
ROOT = Path(__file__).resolve().parents[2]


class AwsLikeS3Server(S3Server):
    """S3Server, running this module instead of moto.server."""

    def start(self) -> "AwsLikeS3Server":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=log, start_new_session=True, cwd=ROOT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{__name__} exited with {self.proc.returncode} before it was ready")
            try:
                urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=1).close()
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{__name__} did not answer on {self.endpoint_url} within {START_TIMEOUT_S} s")


@pytest.fixture(scope="session")
def aws_like_s3_server(tmp_path_factory):
    with AwsLikeS3Server(log_path=str(tmp_path_factory.mktemp("aws-like-s3") / "moto.log")) as server:
        boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture
def aws_like_s3(aws_like_s3_server, monkeypatch):
    """boto3 in this process and its children talks to the AWS-like server; BUCKET exists."""
    for key, value in aws_like_s3_server.env().items():
        monkeypatch.setenv(key, value)
    return aws_like_s3_server


def _knows_the_upload(method):
    from moto.s3.exceptions import NoSuchUpload

    @functools.wraps(method)
    def checked(backend, bucket_name, multipart_id, *args, **kwargs):
        if multipart_id not in backend.get_bucket(bucket_name).multiparts:
            raise NoSuchUpload(upload_id=multipart_id)
        return method(backend, bucket_name, multipart_id, *args, **kwargs)

    return checked


def main() -> None:
    from moto import server
    from moto.s3.models import S3Backend

    S3Backend.upload_part = _knows_the_upload(S3Backend.upload_part)
    S3Backend.complete_multipart_upload = _knows_the_upload(S3Backend.complete_multipart_upload)
    server.main()


if __name__ == "__main__":
    main()
