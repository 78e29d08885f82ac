"""CompilationService: Create, Describe, Stop, Delete and `call`, over a real JobStore."""
from __future__ import annotations

import threading

import pytest

from agent.api import CompilationService, UnknownOperationException
from agent.api.shapes import operation_model
from agent.config import AgentConfig, S3Config
from agent.errors import ResourceInUse, ResourceLimitExceeded, ResourceNotFound, ValidationException
from agent.jobs.job import Status

from tests.api.helpers import ACCOUNT, REGION, X86_TARGETS, check_output, make_body, put_in

NON_TERMINAL = [Status.STARTING, Status.INPROGRESS, Status.STOPPING]
TERMINAL = [Status.COMPLETED, Status.FAILED, Status.STOPPED]
# --- Create -----------------------------------------------------------------------------
def test_create_records_the_job_and_enqueues_it(service, store, runner):
    body = make_body("Resnet-50")
    answer = service.create_compilation_job(body)
    check_output("CreateCompilationJob", answer)
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:compilation-job/resnet-50"
    assert answer == {"CompilationJobArn": arn}
    job = store.get("Resnet-50")
    assert job.name == "Resnet-50" and job.arn == arn
    assert job.request == body  # exactly as accepted
    assert job.status == Status.STARTING
    assert job.channel == "http"
    assert runner.calls == [("enqueue", "Resnet-50")]


def test_create_drops_nulls_from_the_record(service, store):
    body = make_body(Tags=[{"Key": "k", "Value": "v"}])
    body["VpcConfig"] = None
    body["OutputConfig"]["CompilerOptions"] = None
    service.create_compilation_job(body)
    assert "VpcConfig" not in store.get("job-1").request
    assert "CompilerOptions" not in store.get("job-1").request["OutputConfig"]


@pytest.mark.parametrize("region, partition", [("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov"), ("eu-west-1", "aws")])
def test_arn_partition_follows_the_region(store, runner, tmp_path, region, partition):
    config = AgentConfig(state_dir=tmp_path, region=region, account=ACCOUNT)
    service = CompilationService(store, runner, config, target_check=X86_TARGETS)
    answer = service.create_compilation_job(make_body())
    assert answer["CompilationJobArn"].startswith(f"arn:{partition}:sagemaker:{region}:")
    check_output("CreateCompilationJob", answer)


@pytest.mark.parametrize("second", ["job-1", "JOB-1", "Job-1"])
def test_a_taken_name_is_resource_in_use(service, runner, second):
    service.create_compilation_job(make_body("job-1"))
    with pytest.raises(ResourceInUse) as caught:
        service.create_compilation_job(make_body(second))
    assert caught.value.code == "ResourceInUse"
    assert runner.calls == [("enqueue", "job-1")]


def test_the_queue_limit(store, runner, tmp_path):
    config = AgentConfig(state_dir=tmp_path, region=REGION, account=ACCOUNT, queue_limit=2)
    service = CompilationService(store, runner, config, target_check=X86_TARGETS)
    service.create_compilation_job(make_body("a"))
    service.create_compilation_job(make_body("b"))
    with pytest.raises(ResourceLimitExceeded) as caught:
        service.create_compilation_job(make_body("c"))
    assert "2 compilation jobs waiting to start" in caught.value.message
    assert store.find("c") is None
    store.transition("a", Status.INPROGRESS)  # only queued (STARTING) jobs count
    service.create_compilation_job(make_body("c"))


def test_role_arn_must_have_an_iot_role_alias_when_the_device_maps_them(store, runner, tmp_path):
    """With s3.role_aliases, a RoleArn the device holds no role alias for is refused at Create."""
    cert, key = tmp_path / "thing.pem", tmp_path / "thing.key"
    cert.write_text("certificate")
    key.write_text("key")
    key.chmod(0o600)
    allowed = "arn:aws:iam::123456789012:role/service-role/NeoRole"  # make_body's
    s3 = S3Config(iot_endpoint="creds.example", iot_cert=str(cert), iot_key=str(key),
                  role_aliases={allowed: "neo-alias", "arn:aws:iam::123456789012:role/b": "b-alias"})
    config = AgentConfig(state_dir=tmp_path, region=REGION, account=ACCOUNT, s3=s3)
    service = CompilationService(store, runner, config, target_check=X86_TARGETS)
    service.create_compilation_job(make_body("allowed"))
    with pytest.raises(ValidationException) as caught:
        service.create_compilation_job(make_body("other", RoleArn="arn:aws:iam::123456789012:role/other"))
    assert caught.value.message == (
        "RoleArn arn:aws:iam::123456789012:role/other cannot be used on this device: it holds AWS IoT role "
        f"aliases only for the role ARNs arn:aws:iam::123456789012:role/b, {allowed}.")
    assert store.find("other") is None and runner.calls == [("enqueue", "allowed")]


def test_without_role_aliases_any_role_arn_is_accepted(service):
    service.create_compilation_job(make_body("any", RoleArn="arn:aws:iam::210987654321:role/whatever"))


def test_concurrent_creates_cannot_overshoot_the_queue(store, runner, tmp_path):
    limit = 5
    config = AgentConfig(state_dir=tmp_path, region=REGION, account=ACCOUNT, queue_limit=limit)
    # Two services over one store (two channels) share the create lock.
    services = [CompilationService(store, runner, config, channel=c, target_check=X86_TARGETS) for c in "ab"]
    outcomes: list[str] = []
    barrier = threading.Barrier(20)

    def create(i: int) -> None:
        barrier.wait()
        try:
            services[i % 2].create_compilation_job(make_body(f"job-{i}"))
            outcomes.append("ok")
        except ResourceLimitExceeded:
            outcomes.append("full")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert outcomes.count("ok") == limit and outcomes.count("full") == 20 - limit
    assert store.count([Status.STARTING]) == limit


# --- Describe ---------------------------------------------------------------------------
def test_describe_a_new_job(service, store):
    body = make_body("job-1", Tags=[{"Key": "k", "Value": "v"}])
    service.create_compilation_job(body)
    answer = service.describe_compilation_job({"CompilationJobName": "JOB-1"})
    check_output("DescribeCompilationJob", answer)
    job = store.get("job-1")
    assert answer == {
        "CompilationJobName": "job-1",
        "CompilationJobArn": job.arn,
        "CompilationJobStatus": "STARTING",
        "StoppingCondition": body["StoppingCondition"],
        "CreationTime": job.creation_time,
        "LastModifiedTime": job.last_modified_time,
        "FailureReason": "",
        "ModelArtifacts": {"S3ModelArtifacts": ""},
        "RoleArn": body["RoleArn"],
        "InputConfig": body["InputConfig"],
        "OutputConfig": body["OutputConfig"],
    }
    required = operation_model("DescribeCompilationJob").output_shape.required_members
    assert set(required) <= set(answer)


def test_describe_a_completed_job_with_everything(service, store):
    vpc = {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1", "subnet-2"]}
    service.create_compilation_job(make_body("full", VpcConfig=vpc))
    store.transition("full", Status.INPROGRESS, start_time=1_700_000_100.5, derived_input_config='{"data": [1, 3, 224, 224]}')
    store.transition(
        "full", Status.COMPLETED, end_time=1_700_000_200.25,
        artifact_uri="s3://models/compiled/full-ml_c5.tar.gz", artifact_digest="blake2b:0123abcd",
        metrics={"latency_ms": 1.0},
    )
    answer = service.describe_compilation_job({"CompilationJobName": "full"})
    parsed = check_output("DescribeCompilationJob", answer)
    assert answer["CompilationJobStatus"] == "COMPLETED"
    assert answer["CompilationStartTime"] == 1_700_000_100.5
    assert answer["CompilationEndTime"] == 1_700_000_200.25
    assert answer["ModelArtifacts"] == {"S3ModelArtifacts": "s3://models/compiled/full-ml_c5.tar.gz"}
    assert answer["ModelDigests"] == {"ArtifactDigest": "blake2b:0123abcd"}
    assert answer["DerivedInformation"] == {"DerivedDataInputConfig": '{"data": [1, 3, 224, 224]}'}
    assert answer["VpcConfig"] == vpc
    assert parsed["CompilationEndTime"].timestamp() == 1_700_000_200.25
    assert "InferenceImage" not in answer and "Tags" not in answer


def test_describe_a_failed_job(service, store):
    service.create_compilation_job(make_body())
    store.transition("job-1", Status.FAILED, failure_reason="ClientError: InputConfiguration: no model", end_time=1.0)
    answer = service.describe_compilation_job({"CompilationJobName": "job-1"})
    check_output("DescribeCompilationJob", answer)
    assert answer["FailureReason"] == "ClientError: InputConfiguration: no model"
    assert answer["ModelArtifacts"] == {"S3ModelArtifacts": ""}


def test_describe_with_a_file_output_and_a_target_platform(service, store):
    body = make_body(OutputConfig={"S3OutputLocation": "file:///var/neo/out", "TargetPlatform": {"Os": "LINUX", "Arch": "X86_64"}})
    service.create_compilation_job(body)
    store.transition("job-1", Status.INPROGRESS)
    store.transition("job-1", Status.COMPLETED, artifact_uri="file:///var/neo/out/job-1.tar.gz")
    check_output("DescribeCompilationJob", service.describe_compilation_job({"CompilationJobName": "job-1"}))


def test_describe_unknown_is_resource_not_found(service):
    with pytest.raises(ResourceNotFound):
        service.describe_compilation_job({"CompilationJobName": "nope"})


# --- Stop -------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [Status.STARTING, Status.INPROGRESS])
def test_stop_asks_the_runner(service, store, runner, status):
    service.create_compilation_job(make_body())
    put_in(store, "job-1", status)
    assert service.stop_compilation_job({"CompilationJobName": "JOB-1"}) == {}
    assert runner.calls[-1] == ("stop", "job-1")
    check_output("StopCompilationJob", {})


def test_stop_a_stopping_job_is_a_no_op(service, store, runner):
    service.create_compilation_job(make_body())
    put_in(store, "job-1", Status.STOPPING)
    assert service.stop_compilation_job({"CompilationJobName": "job-1"}) == {}
    assert runner.calls == [("enqueue", "job-1")]


@pytest.mark.parametrize("status", TERMINAL)
def test_stop_a_finished_job_is_refused(service, store, runner, status):
    service.create_compilation_job(make_body())
    put_in(store, "job-1", status)
    with pytest.raises(ValidationException) as caught:
        service.stop_compilation_job({"CompilationJobName": "job-1"})
    assert f"its status is {status.value}" in caught.value.message
    assert runner.calls == [("enqueue", "job-1")]


def test_stop_unknown_is_resource_not_found(service):
    with pytest.raises(ResourceNotFound):
        service.stop_compilation_job({"CompilationJobName": "nope"})


# --- Delete -----------------------------------------------------------------------------
@pytest.mark.parametrize("status", TERMINAL)
def test_delete_a_finished_job(service, store, runner, status):
    service.create_compilation_job(make_body())
    put_in(store, "job-1", status)
    assert service.delete_compilation_job({"CompilationJobName": "Job-1"}) == {}
    assert store.find("job-1") is None
    assert runner.calls[-1] == ("forget", "job-1")
    with pytest.raises(ResourceNotFound):
        service.describe_compilation_job({"CompilationJobName": "job-1"})
    service.create_compilation_job(make_body())  # the name is free again


@pytest.mark.parametrize("status", NON_TERMINAL)
def test_delete_an_unfinished_job_is_refused(service, store, runner, status):
    service.create_compilation_job(make_body())
    put_in(store, "job-1", status)
    with pytest.raises(ValidationException) as caught:
        service.delete_compilation_job({"CompilationJobName": "job-1"})
    advice = "Wait until it has stopped." if status == Status.STOPPING else "Stop it first."
    assert caught.value.message == (
        "Compilation job job-1 can be deleted only when its status is COMPLETED, FAILED or STOPPED; "
        f"it is {status.value}. {advice}"
    )
    assert store.find("job-1") is not None
    assert runner.calls == [("enqueue", "job-1")]


def test_delete_unknown_is_resource_not_found(service):
    with pytest.raises(ResourceNotFound):
        service.delete_compilation_job({"CompilationJobName": "nope"})


# --- call -------------------------------------------------------------------------------
def test_call_dispatches_by_operation_name(service, store):
    arn = service.call("CreateCompilationJob", make_body())["CompilationJobArn"]
    assert service.call("SageMaker.DescribeCompilationJob", {"CompilationJobName": "job-1"})["CompilationJobArn"] == arn
    assert [s["CompilationJobArn"] for s in service.call("ListCompilationJobs", None)["CompilationJobSummaries"]] == [arn]
    assert service.call("StopCompilationJob", {"CompilationJobName": "job-1"}) == {}
    store.transition("job-1", Status.STOPPED)
    assert service.call("DeleteCompilationJob", {"CompilationJobName": "job-1"}) == {}


@pytest.mark.parametrize("operation", ["CreateTrainingJob", "describeCompilationJob", "", "call", "__init__"])
def test_an_unknown_operation(service, operation):
    with pytest.raises(UnknownOperationException) as caught:
        service.call(operation, {})
    assert caught.value.code == "UnknownOperationException"
    assert caught.value.http_status == 400
    assert caught.value.to_body()["__type"] == "UnknownOperationException"


def test_call_validates_missing_bodies(service):
    with pytest.raises(ValidationException, match="at 'compilationJobName' failed to satisfy constraint: Member must not be null"):
        service.call("DescribeCompilationJob", None)


def test_every_operation_of_the_family_is_served():
    names = {"CreateCompilationJob", "DescribeCompilationJob", "ListCompilationJobs", "StopCompilationJob", "DeleteCompilationJob"}
    assert set(CompilationService.OPERATIONS) == names
    for name, method in CompilationService.OPERATIONS.items():
        assert callable(getattr(CompilationService, method))
        operation_model(name)  # the model has it
