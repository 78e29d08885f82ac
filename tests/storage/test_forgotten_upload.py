"""S3 forgets a multipart upload while the agent is sending it: a lifecycle rule or another client
aborts it. The next UploadPart or CompleteMultipartUpload is answered 404 NoSuchUpload, and the
agent starts the upload again, a bounded number of times (agent.storage.s3._multipart).

Against the AWS-like server (tests/storage/aws_like_s3.py, its own process); another boto3
client, not the agent's, aborts the upload through the server, as a second party would. The
last test meets moto as it is, which answers 500 instead.
"""
from __future__ import annotations

import logging
import os
import uuid

import boto3
import pytest

from agent.errors import ClientError
from agent.storage import digest
from agent.storage.retry import Patience
from agent.storage.s3 import MAX_UPLOAD_RESTARTS
from agent.storage.transfer import download, upload
from tests.storage.aws_like_s3 import BUCKET

SIZE = (16 << 20) + 1000  # just past one PutObject: parts of 8 MiB, 8 MiB and 1000 bytes


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "model-ml_c5.tar.gz"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def key():
    return f"out/{uuid.uuid4().hex[:8]}/model-ml_c5.tar.gz"


def abort_the_upload(key: str) -> str:
    """What a second party does: find the upload in progress at `key` and abort it."""
    other = boto3.client("s3")
    uploads = [u for u in other.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", [])
               if u["Key"] == key]
    assert len(uploads) == 1, uploads
    other.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uploads[0]["UploadId"])
    return uploads[0]["UploadId"]


def in_progress(key: str) -> list:
    return boto3.client("s3").list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", [])


@pytest.mark.parametrize("forget_after, answered", [
    (1, "UploadPart 2"),  # between two parts
    (3, "CompleteMultipartUpload"),  # every part sent, not yet completed
])
def test_an_upload_s3_forgets_starts_again_and_is_verified(aws_like_s3, artifact, key, tmp_path, caplog,
                                                           forget_after, answered):
    progress: list[int] = []
    aborted: list[str] = []
    waits: list[str] = []

    def on_part(done: int, total: int) -> None:
        progress.append(done)
        if done == forget_after and not aborted:
            aborted.append(abort_the_upload(key))

    with caplog.at_level(logging.WARNING, logger="agent.storage.s3"):
        stored = upload(artifact, f"s3://{BUCKET}/{key}", on_part=on_part,
                        patience=Patience.for_seconds(30, on_wait=waits.append))
    assert progress == [*range(1, forget_after + 1), 1, 2, 3], "the new upload sent every part"
    assert not waits, "a forgotten upload is no outage: nothing was waited out"
    said = [r.getMessage() for r in caplog.records if "starting it again" in r.getMessage()]
    assert said == [f"uploading model-ml_c5.tar.gz to s3://{BUCKET}/{key}: S3 no longer knows upload "
                    f"{aborted[0]} (NoSuchUpload to {answered}); starting it again"]
    assert (stored.size, stored.parts, stored.verified_by) == (SIZE, 3, "sha256")
    back = download(f"s3://{BUCKET}/{key}", tmp_path / "back", max_bytes=1 << 30)
    assert digest(back.path) == digest(artifact), "the bytes in S3 are the artifact's bytes"
    assert not in_progress(key), "no upload is left behind"


def test_a_store_that_forgets_every_upload_fails_with_the_reason(aws_like_s3, artifact, key, caplog):
    progress: list[int] = []

    def on_part(done: int, total: int) -> None:
        progress.append(done)
        abort_the_upload(key)  # forgotten as soon as it holds a part, every time

    with caplog.at_level(logging.WARNING, logger="agent.storage.s3"), pytest.raises(ClientError) as info:
        upload(artifact, f"s3://{BUCKET}/{key}", on_part=on_part, patience=Patience.for_seconds(30))
    assert info.value.reason.startswith(f"ClientError: OutputConfiguration: S3 forgot the multipart upload "
                                        f"{MAX_UPLOAD_RESTARTS + 1} times (last: upload ")
    assert "NoSuchUpload to UploadPart 2" in info.value.detail
    assert f"Bucket: {BUCKET}, Key: {key}" in info.value.detail
    assert progress == [1] * (MAX_UPLOAD_RESTARTS + 1), "started again a bounded number of times, then gave up"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("starting it again" in m for m in messages) == MAX_UPLOAD_RESTARTS
    assert not any("could not abort" in m for m in messages), "no abort is tried on an upload S3 forgot"
    assert not in_progress(key)
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=key)


def test_moto_as_it_is_answers_500_and_the_upload_still_starts_again(s3_bucket, artifact, tmp_path, caplog):
    """moto 5.2 answers an UploadPart on an aborted upload 500 (its KeyError), not NoSuchUpload:
    the agent takes that for an outage, waits, asks ListParts (which moto answers NoSuchUpload)
    and starts again. Slower than AWS's answer, but it ends in the same verified object."""
    aborted: list[str] = []

    def on_part(done: int, total: int) -> None:
        if not aborted:
            other = boto3.client("s3")
            upload_id = other.list_multipart_uploads(Bucket=s3_bucket)["Uploads"][0]["UploadId"]
            other.abort_multipart_upload(Bucket=s3_bucket, Key="out/model.tar.gz", UploadId=upload_id)
            aborted.append(upload_id)

    with caplog.at_level(logging.WARNING, logger="agent.storage.s3"):
        stored = upload(artifact, f"s3://{s3_bucket}/out/model.tar.gz", on_part=on_part,
                        patience=Patience.for_seconds(30))
    assert any("starting it again" in r.getMessage() for r in caplog.records)
    assert stored.verified_by == "sha256"
    back = download(f"s3://{s3_bucket}/out/model.tar.gz", tmp_path / "back", max_bytes=1 << 30)
    assert digest(back.path) == digest(artifact)
