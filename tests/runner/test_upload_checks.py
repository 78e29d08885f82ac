"""A job's upload as S3 ends up holding it: encrypted with the job's KmsKeyId, and checked
before the job may be COMPLETED (runner + real child + the session's moto server process)."""
from __future__ import annotations

import boto3
import pytest

from agent.jobs.job import Job, Status
from tests.runner.conftest import scripted_job, submit, wait_for, wait_terminal

NAME = "scripted-ml_c5"
OBJECTS = (f"compiled/{NAME}.tar.gz", f"compiled/{NAME}.metrics.json", f"compiled/{NAME}.log")


def publishing_job(name: str, bucket: str, script: str = "publish=1", **output) -> Job:
    job = scripted_job(name, script, MaxRuntimeInSeconds=60)
    job.request["OutputConfig"].update(S3OutputLocation=f"s3://{bucket}/compiled", **output)
    return job


def test_every_object_of_a_job_with_a_kms_key_is_encrypted_with_it(harness, s3_bucket, s3_env):
    key_id = boto3.client("kms", endpoint_url=s3_env.endpoint_url).create_key()["KeyMetadata"]["KeyId"]
    store, runner = harness()
    submit(store, runner, publishing_job("sealed", s3_bucket, KmsKeyId=key_id))
    job = wait_terminal(store, "sealed")
    assert job.status == Status.COMPLETED, job.failure_reason
    s3 = boto3.client("s3")
    for key in OBJECTS:  # the artifact, metrics.json and the log
        head = s3.head_object(Bucket=s3_bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert key_id in head["SSEKMSKeyId"], key


@pytest.mark.parametrize("replacement_mib, words", [
    (1, "S3's SHA-256 "),  # the same size, other bytes
    (2, "S3 holds 2097152 bytes after the upload, the artifact has 1048576"),
])
def test_an_artifact_s3_does_not_hold_as_uploaded_fails_the_job(harness, s3_bucket, replacement_mib, words):
    store, runner = harness()
    submit(store, runner, publishing_job("replaced", s3_bucket, f"replace={replacement_mib} publish=1"))
    job = wait_terminal(store, "replaced")
    assert job.status == Status.FAILED
    assert job.failure_reason.startswith("ServerError: StorageError: ") and words in job.failure_reason
    assert f"Bucket: {s3_bucket}, Key: compiled/{NAME}.tar.gz" in job.failure_reason
    kept = runner.config.job_dir("replaced") / "work" / "out" / f"{NAME}.tar.gz"
    wait_for(store, "replaced", lambda j: any(str(kept) in note for note in j.notes))  # noted after the end
    assert kept.is_file(), "the artifact S3 does not hold stays on the device"
