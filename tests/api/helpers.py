"""Helpers for the API tests: a valid body, a fake runner, a ticking clock, and a check of
answers against botocore's output shapes."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from botocore.model import Shape
from botocore.parsers import create_parser
from botocore.validate import ParamValidator

from agent.api.javaregex import compile_pattern
from agent.api.shapes import ShapeValidator, operation_model
from agent.api.validation import PATTERN_OVERRIDES, device_target_check
from agent.device import detect
from agent.jobs.job import Status

REGION = "us-west-2"
ACCOUNT = "123456789012"
START = 1_700_000_000.0

VALID_BODY: dict[str, Any] = {
    "CompilationJobName": "job-1",
    "RoleArn": "arn:aws:iam::123456789012:role/service-role/NeoRole",
    "InputConfig": {
        "S3Uri": "s3://models/resnet/model.tar.gz",
        "DataInputConfig": '{"data": [1, 3, 224, 224]}',
        "Framework": "ONNX",
    },
    "OutputConfig": {"S3OutputLocation": "s3://models/compiled/", "TargetDevice": "ml_c5"},
    "StoppingCondition": {"MaxRuntimeInSeconds": 900},
}

# The tests pin the device to an x86_64 server (ml_c5 class), from a captured /proc tree.
DEVICES = Path(__file__).resolve().parents[1] / "data" / "devices"
X86_DEVICE = detect(DEVICES / "x86_64_c5")
X86_TARGETS = device_target_check(detection=X86_DEVICE)


def make_body(name: str = "job-1", **changes: Any) -> dict[str, Any]:
    """A valid body; `changes` replace top-level members (None removes one)."""
    body = copy.deepcopy(VALID_BODY)
    body["CompilationJobName"] = name
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


# The shortest legal path from STARTING to each status.
PATHS = {
    Status.STARTING: [],
    Status.INPROGRESS: [Status.INPROGRESS],
    Status.STOPPING: [Status.INPROGRESS, Status.STOPPING],
    Status.COMPLETED: [Status.INPROGRESS, Status.COMPLETED],
    Status.FAILED: [Status.INPROGRESS, Status.FAILED],
    Status.STOPPED: [Status.STOPPED],
}


def put_in(store, name: str, status: Status) -> None:
    """Move a new job to `status` by allowed transitions, as the runner would."""
    for step in PATHS[status]:
        store.transition(name, step)


class FakeRunner:
    """Records what the service asks of the runner; runs nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def enqueue(self, name: str) -> None:
        self.calls.append(("enqueue", name))

    def stop(self, name: str) -> None:
        self.calls.append(("stop", name))

    def forget(self, name: str) -> None:
        self.calls.append(("forget", name))


class Clock:
    """Each reading is one second after the last, so every time is distinct and known."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def assert_only_members(shape: Shape, value: Any, path: str = "") -> None:
    """The answer carries nothing outside the model's members."""
    if shape.type_name == "structure":
        for key, item in value.items():
            assert key in shape.members, f"{path}.{key} is not a member of {shape.name}"
            assert_only_members(shape.members[key], item, f"{path}.{key}")
    elif shape.type_name == "list":
        for item in value:
            assert_only_members(shape.member, item, path + "[]")


def walk_strings(shape: Shape, value: Any):
    """(shape, value) for every string in `value`, by the model's shapes."""
    if shape.type_name == "structure":
        for key, item in value.items():
            yield from walk_strings(shape.members[key], item)
    elif shape.type_name == "list":
        for item in value:
            yield from walk_strings(shape.member, item)
    elif shape.type_name == "string":
        yield shape, value


def check_output(operation: str, answer: dict[str, Any]) -> dict[str, Any]:
    """Parse `answer` as botocore would, validate it against the output shape, and return it.

    ParamValidator checks required members and types; our own walk checks every constraint
    (lengths, enums, patterns; S3 URIs with the agent's relaxed pattern); ARNs must match the
    model's own patterns exactly. An empty S3ModelArtifacts (not compiled yet) is allowed.
    """
    shape = operation_model(operation).output_shape
    if shape is None:
        assert answer == {}
        return answer
    body = json.dumps(answer).encode()
    parsed = create_parser("json").parse({"body": body, "headers": {}, "status_code": 200}, shape)
    parsed.pop("ResponseMetadata", None)
    report = ParamValidator().validate(parsed, shape)
    assert not report.has_errors(), report.generate_report()
    assert_only_members(shape, answer)
    errors = ShapeValidator(pattern_overrides=PATTERN_OVERRIDES).errors(shape, answer)
    errors = [e for e in errors if not e.startswith("Value '' at 'modelArtifacts.s3ModelArtifacts'")]
    assert not errors, errors
    for string_shape, text in walk_strings(shape, answer):
        if string_shape.name.endswith("Arn") and "pattern" in string_shape.metadata:
            assert compile_pattern(string_shape.metadata["pattern"]).fullmatch(text), (string_shape.name, text)
    return parsed
