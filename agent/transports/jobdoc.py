"""AWS IoT Jobs documents for compilation jobs: the operator's side (`neo-agent fleet-job`).

The schema, shared with the device side (agent/transports/iotjobs.py, whose
`request_from_document` reads it):

    {"operation": "CreateCompilationJob",
     "request": {...CreateCompilationJob's body, without CompilationJobName...}}

Each device names the compilation job after the IoT job (`iotjob-<job id>-<hash>`), so
one fleet job is one compilation job per device however often IoT Jobs announces it; a
CompilationJobName in the document is therefore left out here. The document must fit IoT
Jobs' 32 KiB limit.

The IoT job's in-progress timeout follows the request: MaxRuntimeInSeconds (plus
MaxPendingTimeInSeconds, as the device may queue the job first) in whole minutes, plus a
margin for the fetch, the upload and the report, within IoT's 1 to 10080 minutes.
"""
from __future__ import annotations

import json
import math
import re
import shlex
from typing import Any

from agent.errors import ValidationException
from agent.jobs.job import DEFAULT_MAX_RUNTIME

OPERATION = "CreateCompilationJob"
MAX_DOCUMENT_BYTES = 32768  # IoT Jobs' jobDocument limit
TIMEOUT_MARGIN_MIN = 10
IN_PROGRESS_TIMEOUT_MAX_MIN = 10080  # 7 days: IoT's bound for inProgressTimeoutInMinutes
JOB_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
THING_GROUP_ARN = re.compile(r"^arn:aws[a-z-]*:iot:[a-z0-9-]+:\d{12}:(thinggroup|thing)/[a-zA-Z0-9:_-]+$")


def build_document(request: dict[str, Any]) -> dict[str, Any]:
    """The IoT job document for a CreateCompilationJob request (its name is left out)."""
    if not isinstance(request, dict):
        raise ValidationException("The request must be CreateCompilationJob's body, a JSON object.")
    body = {k: v for k, v in request.items() if k != "CompilationJobName"}
    document = {"operation": OPERATION, "request": body}
    size = len(document_bytes(document))
    if size > MAX_DOCUMENT_BYTES:
        raise ValidationException(f"The job document is {size} bytes; IoT Jobs accepts at most {MAX_DOCUMENT_BYTES}.")
    return document


def document_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"


def in_progress_timeout_minutes(request: dict[str, Any]) -> int:
    stopping = request.get("StoppingCondition") or {}
    seconds = int(stopping.get("MaxRuntimeInSeconds") or DEFAULT_MAX_RUNTIME)
    seconds += int(stopping.get("MaxPendingTimeInSeconds") or 0)
    return max(1, min(IN_PROGRESS_TIMEOUT_MAX_MIN, math.ceil(seconds / 60) + TIMEOUT_MARGIN_MIN))


def default_job_id(request: dict[str, Any]) -> str:
    """The request's CompilationJobName (within IoT's job id rule), or "neo-compilation"."""
    name = str(request.get("CompilationJobName") or "neo-compilation")
    return re.sub(r"[^a-zA-Z0-9_-]", "-", name)[:64]


def create_job_command(job_id: str, targets: str, document_path: str, timeout_minutes: int) -> list[str]:
    """`aws iot create-job` for the document, as an argument list (shlex.join to print it)."""
    if not JOB_ID.match(job_id):
        raise ValidationException(f"Job id {job_id!r}: 1 to 64 characters of [a-zA-Z0-9_-].")
    if not THING_GROUP_ARN.match(targets):
        raise ValidationException(f"Target {targets!r} is not a thing group (or thing) ARN: "
                                  "arn:aws:iot:REGION:ACCOUNT:thinggroup/NAME.")
    return [
        "aws", "iot", "create-job",
        "--job-id", job_id,
        "--targets", targets,
        "--document", f"file://{document_path}",
        "--timeout-config", f"inProgressTimeoutInMinutes={timeout_minutes}",
    ]


def command_line(argv: list[str]) -> str:
    return shlex.join(argv)
