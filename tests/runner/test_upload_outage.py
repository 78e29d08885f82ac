"""A job meets an S3 outage in its upload stage: it waits there, then completes or fails with
the reason; its packed artifact stays on disk until uploaded or deleted (runner + real child +
real moto server process, killed and restarted). S3 forgets a multipart upload mid-way. And the
state directory's disk rule."""
from __future__ import annotations

import hashlib

import boto3
import pytest

from agent.jobs.job import Job, Status
from agent.runner import housekeeping
from tests.restartable_s3 import BUCKET as OWN_BUCKET
from tests.storage.aws_like_s3 import BUCKET as FORGETFUL_BUCKET
from tests.runner.conftest import scripted_job, submit, wait_for, wait_terminal


def publishing_job(name: str, max_runtime: int) -> Job:
    job = scripted_job(name, "publish=1", MaxRuntimeInSeconds=max_runtime)
    job.request["OutputConfig"]["S3OutputLocation"] = f"s3://{OWN_BUCKET}/compiled"
    return job


@pytest.mark.faults
def test_a_job_waits_in_upload_while_s3_is_down_then_completes(harness, own_s3):
    store, runner = harness()
    own_s3.kill()
    submit(store, runner, publishing_job("waits", 120))
    job = wait_for(store, "waits", lambda j: "storage unreachable" in j.stage_message, timeout=30)
    assert job.status == Status.INPROGRESS and job.stage == "upload"
    own_s3.restart_later(0).join()
    job = wait_terminal(store, "waits", timeout=90)
    assert job.status == Status.COMPLETED, job.failure_reason
    s3 = boto3.client("s3")
    body = s3.get_object(Bucket=OWN_BUCKET, Key="compiled/scripted-ml_c5.tar.gz")["Body"].read()
    assert hashlib.blake2b(body).hexdigest() == job.artifact_digest, "ModelDigests.ArtifactDigest is S3's bytes"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=OWN_BUCKET)["Contents"]}
    assert keys == {"compiled/scripted-ml_c5.tar.gz", "compiled/scripted-ml_c5.metrics.json",
                    "compiled/scripted-ml_c5.log"}
    folder = runner.config.job_dir("waits")
    assert not (folder / "work").exists(), "an uploaded job keeps no working files"
    assert (folder / "job.log").is_file()


@pytest.mark.faults
def test_s3_killed_between_two_parts_of_a_multipart_upload_then_restarted(harness, own_s3):
    """The new server has lost the upload (moto keeps it in memory): the job starts it again."""
    store, runner = harness()
    job = publishing_job("multipart", 120)  # 20 MiB: parts of 8, 8 and 4 MiB
    job.request["Tags"][0]["Value"] = "pause-after-part=1:2 publish=20"  # 2 s to break S3 after part 1
    submit(store, runner, job)
    wait_for(store, "multipart", lambda j: j.stage_message == "uploaded part 1 of 3", timeout=30)
    own_s3.kill()
    restarted = own_s3.restart_later(3.0)  # after the child has met the dead server with part 2
    job = wait_terminal(store, "multipart", timeout=90)
    restarted.join()
    assert job.status == Status.COMPLETED, job.failure_reason
    log = (runner.config.job_dir("multipart") / "job.log").read_text()
    assert "storage unreachable, attempt 1 failed" in log
    assert "S3 no longer knows upload" in log and "starting it again" in log
    body = boto3.client("s3").get_object(Bucket=OWN_BUCKET, Key="compiled/scripted-ml_c5.tar.gz")["Body"].read()
    assert len(body) == 20 * 2**20
    assert hashlib.blake2b(body).hexdigest() == job.artifact_digest, "ModelDigests.ArtifactDigest is S3's bytes"


@pytest.mark.faults
def test_s3_forgets_a_multipart_upload_between_two_parts(harness, aws_like_s3):
    """Another client aborts the upload while the job pauses after part 1 (as a lifecycle rule
    would); S3 answers part 2 with 404 NoSuchUpload, and the job starts the upload again."""
    store, runner = harness()
    job = publishing_job("forgotten", 60)  # 20 MiB: parts of 8, 8 and 4 MiB
    job.request["OutputConfig"]["S3OutputLocation"] = f"s3://{FORGETFUL_BUCKET}/compiled"
    job.request["Tags"][0]["Value"] = "pause-after-part=1:2 publish=20"
    submit(store, runner, job)
    wait_for(store, "forgotten", lambda j: j.stage_message == "uploaded part 1 of 3", timeout=30)
    other = boto3.client("s3")
    uploads = other.list_multipart_uploads(Bucket=FORGETFUL_BUCKET, Prefix="compiled/").get("Uploads", [])
    assert [u["Key"] for u in uploads] == ["compiled/scripted-ml_c5.tar.gz"]
    other.abort_multipart_upload(Bucket=FORGETFUL_BUCKET, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"])
    job = wait_terminal(store, "forgotten", timeout=60)
    assert job.status == Status.COMPLETED, job.failure_reason
    log = (runner.config.job_dir("forgotten") / "job.log").read_text()
    assert (f"S3 no longer knows upload {uploads[0]['UploadId']} (NoSuchUpload to UploadPart 2); "
            "starting it again") in log
    assert "storage unreachable" not in log, "a forgotten upload is no outage"
    body = other.get_object(Bucket=FORGETFUL_BUCKET, Key="compiled/scripted-ml_c5.tar.gz")["Body"].read()
    assert len(body) == 20 * 2**20
    assert hashlib.blake2b(body).hexdigest() == job.artifact_digest, "ModelDigests.ArtifactDigest is S3's bytes"
    assert not other.list_multipart_uploads(Bucket=FORGETFUL_BUCKET, Prefix="compiled/").get("Uploads")


@pytest.mark.faults
def test_s3_down_until_the_deadline_fails_with_the_reason_and_keeps_the_artifact(harness, own_s3):
    store, runner = harness()
    own_s3.kill()
    submit(store, runner, publishing_job("gives-up", 12))
    job = wait_terminal(store, "gives-up", timeout=40)
    assert job.status == Status.FAILED
    assert job.failure_reason.startswith("ServerError: StorageUnreachable: uploading scripted-ml_c5.tar.gz")
    assert "stayed unreachable" in job.failure_reason and "time ran out" in job.failure_reason
    kept = runner.config.job_dir("gives-up") / "work" / "out" / "scripted-ml_c5.tar.gz"
    job = wait_for(store, "gives-up", lambda j: any(str(kept) in note for note in j.notes))  # noted after the end
    assert kept.is_file()
    store.delete("gives-up")
    runner.forget("gives-up")
    assert not runner.config.job_dir("gives-up").exists()


def test_the_oldest_ended_jobs_lose_their_files_first(harness):
    store, runner = harness()
    for index, name in enumerate(("old", "mid", "new")):
        submit(store, runner, scripted_job(name, "stage=upload fail=upload"))
        wait_terminal(store, name)
        out = runner.config.job_dir(name) / "work" / "out"
        out.mkdir(parents=True)
        (out / f"{name}.tar.gz").write_bytes(b"x" * (1 << 20))  # as if its upload had failed
    total = housekeeping.enforce_budget(store, runner.config.jobs_dir, int(1.5 * 2**20))
    assert total <= 1.5 * 2**20
    assert not housekeeping.retained_artifacts(runner.config.job_dir("old"))
    assert not housekeeping.retained_artifacts(runner.config.job_dir("mid"))
    assert housekeeping.retained_artifacts(runner.config.job_dir("new"))
    assert "removed from this device" in store.get("old").notes[-1]
    assert store.get("old").status == Status.FAILED, "records stay; only files go"


@pytest.mark.faults
def test_a_job_on_a_full_disk_fails_at_once(harness):
    store, runner = harness(min_free_mb=2**40)  # more than any disk has free
    submit(store, runner, scripted_job("no-room", "stage=compile"))
    job = wait_terminal(store, "no-room")
    assert job.status == Status.FAILED
    assert job.failure_reason.startswith("ServerError: InsufficientDiskSpace: the state directory")
    assert "min_free_mb=1099511627776" in job.failure_reason
