"""boto3 and the AWS CLI, unmodified, against `neo-agent run` as a real process.

Each test starts its own daemon (`python -m agent.cli run --http 127.0.0.1:0`) on a fresh
state directory, so the single compile slot is never busy with another test's job.
"""
from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from agent.samples import make_sample_archive
from tests.service.daemon_process import (
    BUSY_BENCH_ENV,
    REPO,
    DaemonProcess,
    clean_env,
    job_request,
    kill_alarm,  # noqa: F401 - the fixture, used through pytestmark
    wait_status,
)

pytestmark = pytest.mark.usefixtures("kill_alarm")

TERMINAL = {"COMPLETED", "FAILED", "STOPPED"}
AWS_CLI = Path(REPO) / ".venv" / "bin" / "aws"
CLI_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def sample_archive(tmp_path_factory) -> Path:
    return make_sample_archive(tmp_path_factory.mktemp("sample"))


@pytest.fixture
def daemon(tmp_path):
    """A fresh daemon; SIGTERM at the end, and a clean exit is part of every test."""
    process = DaemonProcess(tmp_path / "state" / "nested").start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture
def busy_daemon(tmp_path):
    """A fresh daemon whose real compiles stay INPROGRESS (benchmarking) until stopped."""
    process = DaemonProcess(tmp_path / "state", env=BUSY_BENCH_ENV).start()
    yield process
    assert process.stop() == 0, process.log()


def missing_model_request(tmp_path: Path, name: str) -> dict:
    """A job that fails at once in fetch: its model file does not exist."""
    return job_request(name, (tmp_path / "absent" / "model.tar.gz").as_uri(), (tmp_path / "out").as_uri())


def error_of(call, **kwargs) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    error = caught.value.response["Error"]
    return error["Code"], error["Message"], caught.value.response["ResponseMetadata"]["HTTPStatusCode"]


# --- boto3 ----------------------------------------------------------------------------------
def test_boto3_runs_a_real_job_to_completed(daemon, sample_archive, tmp_path):
    client = daemon.client()
    out = tmp_path / "out"
    arn = client.create_compilation_job(**job_request("http-e2e", sample_archive.as_uri(), out.as_uri()))
    assert arn["CompilationJobArn"] == "arn:aws:sagemaker:us-east-1:000000000000:compilation-job/http-e2e"
    assert arn["ResponseMetadata"]["RequestId"]  # x-amzn-RequestId, parsed by botocore

    describe = wait_status(client, "http-e2e", TERMINAL)
    assert describe["CompilationJobStatus"] == "COMPLETED", describe["FailureReason"]
    # Epoch seconds on the wire become botocore's timezone-aware datetimes, as from SageMaker.
    for key in ("CreationTime", "LastModifiedTime", "CompilationStartTime", "CompilationEndTime"):
        assert isinstance(describe[key], datetime.datetime) and describe[key].tzinfo is not None
    assert describe["CreationTime"] <= describe["CompilationStartTime"] <= describe["CompilationEndTime"]
    artifact = Path(describe["ModelArtifacts"]["S3ModelArtifacts"].removeprefix("file://"))
    assert artifact.is_file() and artifact.parent == out
    assert len(describe["ModelDigests"]["ArtifactDigest"]) == 128
    assert json.loads(describe["DerivedInformation"]["DerivedDataInputConfig"]) == {"input": [1, 3, 64, 64]}

    summary = client.list_compilation_jobs()["CompilationJobSummaries"]
    assert [(s["CompilationJobName"], s["CompilationJobStatus"], s["CompilationTargetDevice"]) for s in summary] == [
        ("http-e2e", "COMPLETED", "ml_c5")]


def test_boto3_paginator_walks_every_page(daemon, tmp_path):
    client = daemon.client()
    names = [f"page-{i:02d}" for i in range(12)]
    for name in names:
        client.create_compilation_job(**missing_model_request(tmp_path, name))
    client.create_compilation_job(**missing_model_request(tmp_path, "unrelated"))

    paginator = client.get_paginator("list_compilation_jobs")
    pages = list(paginator.paginate(NameContains="page-", SortOrder="Ascending", PaginationConfig={"PageSize": 5}))
    assert [len(p["CompilationJobSummaries"]) for p in pages] == [5, 5, 2]
    assert [s["CompilationJobName"] for p in pages for s in p["CompilationJobSummaries"]] == names
    assert all("NextToken" in p for p in pages[:-1]) and "NextToken" not in pages[-1]

    # MaxItems stops early and hands back a token that resumes where it stopped.
    first = paginator.paginate(PaginationConfig={"MaxItems": 7, "PageSize": 3}).build_full_result()
    rest = paginator.paginate(PaginationConfig={"StartingToken": first["NextToken"], "PageSize": 3}).build_full_result()
    walked = [s["CompilationJobName"] for s in first["CompilationJobSummaries"] + rest["CompilationJobSummaries"]]
    assert sorted(walked) == sorted(names + ["unrelated"]) and len(first["CompilationJobSummaries"]) == 7

    # The missing model fails in Neo's words, through the same endpoint.
    failed = wait_status(client, "page-00", TERMINAL, timeout=120)
    assert failed["CompilationJobStatus"] == "FAILED"
    assert failed["FailureReason"].startswith("ClientError: InputConfiguration:"), failed["FailureReason"]


def test_boto3_stop_delete_and_their_errors(tmp_path, sample_archive):
    # A queue of one: the running job, one waiting behind it, and the next one refused.
    daemon = DaemonProcess(tmp_path / "state", env={"NEO_AGENT_QUEUE_LIMIT": "1", **BUSY_BENCH_ENV}).start()
    try:
        client = daemon.client()
        client.create_compilation_job(**job_request("running", sample_archive.as_uri(), (tmp_path / "o1").as_uri()))
        wait_status(client, "running", {"INPROGRESS"}, timeout=60)
        client.create_compilation_job(**job_request("queued", sample_archive.as_uri(), (tmp_path / "o2").as_uri()))
        code, message, status = error_of(client.create_compilation_job, **missing_model_request(tmp_path, "refused"))
        assert (code, status) == ("ResourceLimitExceeded", 400) and "waiting to start" in message

        code, message, _ = error_of(client.delete_compilation_job, CompilationJobName="running")
        assert code == "ValidationException" and "Stop it first" in message

        client.stop_compilation_job(CompilationJobName="queued")  # STARTING: stopped on the spot
        assert client.describe_compilation_job(CompilationJobName="queued")["CompilationJobStatus"] == "STOPPED"

        client.stop_compilation_job(CompilationJobName="running")  # INPROGRESS: STOPPING, then STOPPED
        stopped = wait_status(client, "running", TERMINAL, timeout=60)
        assert stopped["CompilationJobStatus"] == "STOPPED"
        code, message, _ = error_of(client.stop_compilation_job, CompilationJobName="running")
        assert code == "ValidationException" and "cannot be stopped" in message

        assert client.delete_compilation_job(CompilationJobName="running")["ResponseMetadata"]["HTTPStatusCode"] == 200
        for call in (client.describe_compilation_job, client.delete_compilation_job, client.stop_compilation_job):
            code, message, status = error_of(call, CompilationJobName="running")
            assert (code, status) == ("ResourceNotFound", 400) and "running" in message
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_boto3_sees_every_api_error_as_client_error(daemon, tmp_path):
    client = daemon.client()
    bad = missing_model_request(tmp_path, "bad name!")
    code, message, status = error_of(client.create_compilation_job, **bad)
    assert (code, status) == ("ValidationException", 400)
    assert message == ("1 validation error detected: Value 'bad name!' at 'compilationJobName' failed to satisfy "
                       "constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")

    client.create_compilation_job(**missing_model_request(tmp_path, "taken"))
    code, _, status = error_of(client.create_compilation_job, **missing_model_request(tmp_path, "TAKEN"))
    assert (code, status) == ("ResourceInUse", 400)

    code, _, _ = error_of(client.list_compilation_jobs, NextToken="not-a-token")
    assert code == "ValidationException"
    code, message, status = error_of(client.describe_compilation_job, CompilationJobName="nobody")
    assert (code, status) == ("ResourceNotFound", 400) and "nobody" in message


# --- the AWS CLI ----------------------------------------------------------------------------
def aws(daemon: DaemonProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not AWS_CLI.exists():
        pytest.skip(f"the AWS CLI is not installed in the venv ({AWS_CLI}); scripts/setup installs it")
    proc = subprocess.run([str(AWS_CLI), "sagemaker", *args, "--endpoint-url", daemon.url, "--output", "json"],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=clean_env())
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_aws_cli_create_describe_list_stop_delete(busy_daemon, sample_archive, tmp_path):
    # A real job holds the compile slot, so the CLI's jobs wait in STARTING behind it.
    daemon = busy_daemon
    daemon.client().create_compilation_job(**job_request("busy", sample_archive.as_uri(), (tmp_path / "o").as_uri()))
    for index in range(3):
        request = tmp_path / f"req{index}.json"
        request.write_text(json.dumps(missing_model_request(tmp_path, f"cli-{index}")))
        created = json.loads(aws(daemon, "create-compilation-job", "--cli-input-json", request.as_uri()).stdout)
        assert created["CompilationJobArn"].endswith(f":compilation-job/cli-{index}")

    aws(daemon, "stop-compilation-job", "--compilation-job-name", "cli-0")
    described = json.loads(aws(daemon, "describe-compilation-job", "--compilation-job-name", "cli-0").stdout)
    assert described["CompilationJobStatus"] == "STOPPED"
    assert described["InputConfig"]["Framework"] == "ONNX" and isinstance(described["CreationTime"], (int, float))

    # --max-items drives the CLI's own paginator: a NextToken, then the rest from it.
    first = json.loads(aws(daemon, "list-compilation-jobs", "--name-contains", "cli-", "--sort-order", "Ascending",
                           "--max-items", "2", "--page-size", "1").stdout)
    assert [s["CompilationJobName"] for s in first["CompilationJobSummaries"]] == ["cli-0", "cli-1"]
    rest = json.loads(aws(daemon, "list-compilation-jobs", "--name-contains", "cli-", "--sort-order", "Ascending",
                          "--starting-token", first["NextToken"]).stdout)
    assert [s["CompilationJobName"] for s in rest["CompilationJobSummaries"]] == ["cli-2"]

    aws(daemon, "delete-compilation-job", "--compilation-job-name", "cli-0")
    missing = aws(daemon, "describe-compilation-job", "--compilation-job-name", "cli-0", check=False)
    assert missing.returncode == 255  # AWS CLI v1's exit code for a service error (v2 says 254)
    assert "(ResourceNotFound)" in missing.stderr and "cli-0" in missing.stderr
    refused = aws(daemon, "create-compilation-job", "--cli-input-json", (tmp_path / "req1.json").as_uri(), check=False)
    assert refused.returncode == 255 and "(ResourceInUse)" in refused.stderr
