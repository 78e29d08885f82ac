"""The five Neo operations, in SageMaker's JSON bodies, independent of any transport.

A transport (HTTP, MQTT, IoT Jobs, ...) turns its message into an operation name and a body,
calls `CompilationService.call`, and sends back the dict it returns, or the ApiError it raises
(`.code`, `.http_status`, `.to_body()`). Bodies are what boto3 would serialize and parse; times
in answers are epoch seconds.

The service validates, records and answers. It never runs a job: it hands names to the runner
(`enqueue`, `stop`, `forget`), and the runner moves the job through its states.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any, Callable, Protocol

from agent.api import shapes
from agent.api.arns import compilation_job_arn
from agent.api.validation import (
    PATTERN_OVERRIDES,
    TargetCheck,
    check_file_uris,
    device_target_check,
    validate_create,
)
from agent.config import AgentConfig
from agent.errors import ServiceUnavailable, UnknownOperationException, ValidationException
from agent.jobs.job import TERMINAL, Job, Status
from agent.jobs.store import JobStore
from agent.storage.credentials import role_alias_for

DEFAULT_MAX_RESULTS = 10  # ListCompilationJobs' MaxResults when the caller gives none
DEFAULT_SORT_BY = "CreationTime"
DEFAULT_SORT_ORDER = "Descending"
INVALID_TOKEN = "Invalid pagination token"
OPERATION_PREFIX = "SageMaker."  # the X-Amz-Target prefix, tolerated in `call`


class Runner(Protocol):
    """What the service needs from the runner; the runner owns every later transition."""

    def enqueue(self, name: str) -> None: ...
    def stop(self, name: str) -> None: ...
    def forget(self, name: str) -> None: ...


class CompilationService:
    """CreateCompilationJob, Describe-, List-, Stop- and DeleteCompilationJob over a JobStore.

    `channel` is recorded on each job created through this service, so events about the job
    go back where the request came from. `target_check` decides which targets this device
    compiles for (by default the device profiles, with the agent's cross_compile setting).
    """

    OPERATIONS = {
        "CreateCompilationJob": "create_compilation_job",
        "DescribeCompilationJob": "describe_compilation_job",
        "ListCompilationJobs": "list_compilation_jobs",
        "StopCompilationJob": "stop_compilation_job",
        "DeleteCompilationJob": "delete_compilation_job",
    }

    def __init__(
        self,
        store: JobStore,
        runner: Runner,
        config: AgentConfig,
        channel: str = "",
        *,
        target_check: TargetCheck | None = None,
        accepting: Callable[[], bool] = lambda: True,
    ):
        self.store = store
        self.runner = runner
        self.config = config
        self.channel = channel
        self.target_check = target_check or device_target_check(allow_cross=config.cross_compile)
        self.validator = shapes.ShapeValidator(pattern_overrides=PATTERN_OVERRIDES)
        self.accepting = accepting  # False once the agent is shutting down: no new jobs

    def call(self, operation_name: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """Run the operation SageMaker calls `operation_name` (e.g. "CreateCompilationJob")."""
        name = operation_name.removeprefix(OPERATION_PREFIX) if isinstance(operation_name, str) else ""
        method = self.OPERATIONS.get(name)
        if method is None:
            raise UnknownOperationException(
                f"Operation {operation_name!r} is not supported; this API has {', '.join(self.OPERATIONS)}."
            )
        handler: Callable[[Any], dict[str, Any]] = getattr(self, method)
        return handler({} if body is None else body)

    # --- CreateCompilationJob ---------------------------------------------------------
    def create_compilation_job(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self.accepting():
            raise ServiceUnavailable("The agent is shutting down and takes no new compilation jobs; "
                                     "send the request again once it has restarted.")
        self.validator.validate("CreateCompilationJob", body)
        request = _drop_nulls(body)
        validate_create(request, self.target_check)
        if self.channel:
            check_file_uris(request, self.channel, self.config.file_uri_channels)
        if self.config.s3.role_aliases:
            # The device can act only as the roles it holds AWS IoT role aliases for: refuse
            # another RoleArn now rather than fail the job at its first S3 request.
            role_alias_for(self.config.s3, request["RoleArn"])
        name = request["CompilationJobName"]
        arn = compilation_job_arn(self.config.region, self.config.account, name)
        job = Job(name=name, arn=arn, request=request, channel=self.channel)
        self.store.create(job, queue_limit=self.config.queue_limit)  # ResourceInUse, ResourceLimitExceeded
        self.runner.enqueue(name)
        return {"CompilationJobArn": arn}

    # --- DescribeCompilationJob -------------------------------------------------------
    def describe_compilation_job(self, body: dict[str, Any]) -> dict[str, Any]:
        self.validator.validate("DescribeCompilationJob", body)
        job = self.store.get(body["CompilationJobName"])
        return describe(job)

    # --- ListCompilationJobs ----------------------------------------------------------
    def list_compilation_jobs(self, body: dict[str, Any]) -> dict[str, Any]:
        self.validator.validate("ListCompilationJobs", body)
        query = {
            "creation_after": _time(body.get("CreationTimeAfter")),
            "creation_before": _time(body.get("CreationTimeBefore")),
            "modified_after": _time(body.get("LastModifiedTimeAfter")),
            "modified_before": _time(body.get("LastModifiedTimeBefore")),
            "name_contains": body.get("NameContains"),
            "status": body.get("StatusEquals"),
            "sort_by": body.get("SortBy") or DEFAULT_SORT_BY,
            "descending": (body.get("SortOrder") or DEFAULT_SORT_ORDER) == "Descending",
        }
        fingerprint = _fingerprint(query)
        offset = _read_token(body["NextToken"], fingerprint) if body.get("NextToken") else 0
        limit = body.get("MaxResults") or DEFAULT_MAX_RESULTS
        # One extra row says whether another page exists, without a second COUNT query.
        jobs = self.store.query(**query, offset=offset, limit=limit + 1)
        answer: dict[str, Any] = {"CompilationJobSummaries": [summary(job) for job in jobs[:limit]]}
        if len(jobs) > limit:
            answer["NextToken"] = _make_token(offset + limit, fingerprint)
        return answer

    # --- StopCompilationJob -----------------------------------------------------------
    def stop_compilation_job(self, body: dict[str, Any]) -> dict[str, Any]:
        self.validator.validate("StopCompilationJob", body)
        job = self.store.get(body["CompilationJobName"])
        if job.status in TERMINAL:
            raise ValidationException(
                f"Compilation job {job.name} cannot be stopped: its status is {job.status.value}; "
                "only a STARTING or INPROGRESS job can be stopped."
            )
        if job.status != Status.STOPPING:  # stopping already: a second stop changes nothing
            self.runner.stop(job.name)
        return {}

    # --- DeleteCompilationJob ---------------------------------------------------------
    def delete_compilation_job(self, body: dict[str, Any]) -> dict[str, Any]:
        self.validator.validate("DeleteCompilationJob", body)
        job = self.store.get(body["CompilationJobName"])
        if job.status not in TERMINAL:
            advice = "Wait until it has stopped." if job.status == Status.STOPPING else "Stop it first."
            raise ValidationException(
                f"Compilation job {job.name} can be deleted only when its status is COMPLETED, FAILED or "
                f"STOPPED; it is {job.status.value}. {advice}"
            )
        self.store.delete(job.name)
        self.runner.forget(job.name)
        return {}


# --- rendering jobs as SageMaker's output shapes ----------------------------------------
def describe(job: Job) -> dict[str, Any]:
    """DescribeCompilationJob's answer: every required member, the optional ones when known."""
    request = job.request
    answer: dict[str, Any] = {
        "CompilationJobName": job.name,
        "CompilationJobArn": job.arn,
        "CompilationJobStatus": job.status.value,
        "StoppingCondition": request.get("StoppingCondition", {}),
        "CreationTime": job.creation_time,
        "LastModifiedTime": job.last_modified_time,
        "FailureReason": job.failure_reason or "",
        "ModelArtifacts": {"S3ModelArtifacts": job.artifact_uri or ""},
        "RoleArn": request.get("RoleArn", ""),
        "InputConfig": request.get("InputConfig", {}),
        "OutputConfig": request.get("OutputConfig", {}),
    }
    if job.start_time is not None:
        answer["CompilationStartTime"] = job.start_time
    if job.end_time is not None:
        answer["CompilationEndTime"] = job.end_time
    if job.artifact_digest:
        answer["ModelDigests"] = {"ArtifactDigest": job.artifact_digest}
    for member in ("VpcConfig", "ModelPackageVersionArn"):
        if request.get(member) is not None:
            answer[member] = request[member]
    if job.derived_input_config:
        answer["DerivedInformation"] = {"DerivedDataInputConfig": job.derived_input_config}
    # Whatever the record holds, the answer carries only the model's members.
    return shapes.project(shapes.operation_model("DescribeCompilationJob").output_shape, answer)


def summary(job: Job) -> dict[str, Any]:
    """One CompilationJobSummary of ListCompilationJobs."""
    item: dict[str, Any] = {
        "CompilationJobName": job.name,
        "CompilationJobArn": job.arn,
        "CreationTime": job.creation_time,
        "LastModifiedTime": job.last_modified_time,
        "CompilationJobStatus": job.status.value,
    }
    if job.start_time is not None:
        item["CompilationStartTime"] = job.start_time
    if job.end_time is not None:
        item["CompilationEndTime"] = job.end_time
    output = job.output_config
    if output.get("TargetDevice"):
        item["CompilationTargetDevice"] = output["TargetDevice"]
    target_platform = output.get("TargetPlatform") or {}
    for key in ("Os", "Arch", "Accelerator"):
        if target_platform.get(key):
            item[f"CompilationTargetPlatform{key}"] = target_platform[key]
    return item


# --- helpers ----------------------------------------------------------------------------
def _drop_nulls(value: Any) -> Any:
    """JSON nulls mean "absent" to SageMaker; the record keeps only what was given."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _time(value: Any) -> float | None:
    return None if value is None else shapes.parse_timestamp(value)


def _fingerprint(query: dict[str, Any]) -> str:
    """Which query a NextToken belongs to: a token is only good for the same filters and sort."""
    text = json.dumps(query, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _make_token(offset: int, fingerprint: str) -> str:
    text = json.dumps({"offset": offset, "query": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode()


def _read_token(token: str, fingerprint: str) -> int:
    """The offset a NextToken carries; ValidationException for garbage or another query's token.

    Paging is by offset, so a job created or deleted between pages can shift the pages by one,
    as SageMaker's own paging may.
    """
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        raise ValidationException(INVALID_TOKEN) from None
    if not isinstance(data, dict) or data.get("query") != fingerprint:
        raise ValidationException(INVALID_TOKEN)
    offset = data.get("offset")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValidationException(INVALID_TOKEN)
    return offset
