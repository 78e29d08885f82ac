"""The model-driven validator: cases generated from botocore's sagemaker model itself.

For each operation, a body that uses every member of the input shape is valid; then, for
every member the model constrains, one case breaks that constraint and expects AWS's sentence.
"""
from __future__ import annotations

import copy
import datetime as dt
from typing import Any, Iterator

import pytest

from agent.api.javaregex import compile_pattern
from agent.api.shapes import ShapeValidator, java_str, member_path, operation_model, parse_timestamp
from agent.api.validation import PATTERN_OVERRIDES
from agent.errors import ValidationException

from tests.api.helpers import make_body

FULL_BODIES: dict[str, dict[str, Any]] = {
    "CreateCompilationJob": make_body(
        ModelPackageVersionArn="arn:aws:sagemaker:us-west-2:123456789012:model-package/pkg/1",
        InputConfig={
            "S3Uri": "s3://models/m.tar.gz",
            "DataInputConfig": '{"data": [1, 3, 224, 224]}',
            "Framework": "PYTORCH",
            "FrameworkVersion": "1.8",
        },
        OutputConfig={
            "S3OutputLocation": "s3://models/out/",
            "TargetDevice": "ml_c5",
            "TargetPlatform": {"Os": "LINUX", "Arch": "X86_64", "Accelerator": "NVIDIA"},
            "CompilerOptions": '{"mcpu": "skylake"}',
            "KmsKeyId": "alias/neo",
        },
        VpcConfig={"SecurityGroupIds": ["sg-0123"], "Subnets": ["subnet-0123"]},
        StoppingCondition={"MaxRuntimeInSeconds": 900, "MaxWaitTimeInSeconds": 1000, "MaxPendingTimeInSeconds": 7200},
        Tags=[{"Key": "team", "Value": "vision"}],
    ),
    "DescribeCompilationJob": {"CompilationJobName": "job-1"},
    "StopCompilationJob": {"CompilationJobName": "job-1"},
    "DeleteCompilationJob": {"CompilationJobName": "job-1"},
    "ListCompilationJobs": {
        "NextToken": "token",
        "MaxResults": 10,
        "CreationTimeAfter": 1_600_000_000,
        "CreationTimeBefore": "2030-01-01T00:00:00Z",
        "LastModifiedTimeAfter": 1_600_000_000.5,
        "LastModifiedTimeBefore": "2030-01-01T00:00:00+00:00",
        "NameContains": "job",
        "StatusEquals": "COMPLETED",
        "SortBy": "Name",
        "SortOrder": "Ascending",
    },
}
VALIDATOR = ShapeValidator(pattern_overrides=PATTERN_OVERRIDES)
WRONG_TYPES = {
    "string": [5, True, ["x"], {"x": 1}],
    "integer": ["5", True, 5.5, 2**31, [1]],
    "structure": ["x", ["x"], 5],
    "list": ["x", {"a": 1}, 5],
    "timestamp": ["yesterday", True, [1], float("nan")],
}


def leaves(shape, value, body_path=(), path="") -> Iterator[tuple[tuple, str, Any]]:
    """(where in the body, AWS's path, shape) for every member of the full body."""
    yield body_path, path, shape
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            yield from leaves(member, value[name], body_path + (name,), member_path(path, name))
    elif shape.type_name == "list":
        yield from leaves(shape.member, value[0], body_path + (0,), f"{path}.1.member")


def pattern_breaker(shape) -> str | None:
    """A value within the length limits that the (enforced) pattern refuses, if any exists."""
    pattern = PATTERN_OVERRIDES.get(shape.name, shape.metadata["pattern"])
    size = max(shape.metadata.get("min", 0), 1)
    for candidate in ("\x00" * size, "\n" * size, "#" * size):
        if not compile_pattern(pattern).fullmatch(candidate):
            return candidate
    return None


def shown_pattern(shape) -> str:
    pattern = PATTERN_OVERRIDES.get(shape.name, shape.metadata["pattern"])
    return f"^{pattern}$"


def member_breakers(member, body_path, current) -> Iterator[tuple[tuple, Any, str, str]]:
    """(where, bad value, constraint AWS names, case label) for each rule of one member."""
    meta = member.metadata
    low, high = meta.get("min"), meta.get("max")
    kind = member.type_name
    if kind in ("string", "list"):
        def sized(n: int) -> Any:
            return "a" * n if kind == "string" else [current[0]] * n

        if high is not None:
            yield body_path, sized(high + 1), f"Member must have length less than or equal to {high}", "max"
        if low:
            yield body_path, sized(low - 1), f"Member must have length greater than or equal to {low}", "min"
    if kind == "string" and "pattern" in meta:
        bad = pattern_breaker(member)
        if bad is not None:
            yield body_path, bad, f"Member must satisfy regular expression pattern: {shown_pattern(member)}", "pattern"
    if "enum" in meta:
        yield body_path, "NOT_A_VALUE", f"Member must satisfy enum value set: [{', '.join(meta['enum'])}]", "enum"
    if kind == "integer":
        if low is not None:
            yield body_path, low - 1, f"Member must have value greater than or equal to {low}", "below"
        if high is not None:
            yield body_path, high + 1, f"Member must have value less than or equal to {high}", "above"
    for number, bad in enumerate(WRONG_TYPES.get(kind, [])):
        if kind == "timestamp":
            yield body_path, bad, "Member must be a timestamp: epoch seconds or an ISO-8601 string", f"type{number}"
        else:
            yield body_path, bad, f"Member must be of type {kind}", f"type{number}"
    if kind == "structure":
        yield body_path + ("Bogus",), 1, f"Member is not part of {member.name}", "unknown"
        for name in member.required_members:
            yield body_path + (name,), None, "Member must not be null", f"{name}-required"


def generate_cases() -> Iterator[Any]:
    """One case per constraint per member, for every operation of the family."""
    for operation, body in FULL_BODIES.items():
        shape = operation_model(operation).input_shape
        for body_path, _, member in leaves(shape, body):
            current = _get(body, body_path)
            for where, bad, constraint, label in member_breakers(member, body_path, current):
                if not where:  # a body that is not an object: test_a_body_must_be_an_object
                    continue
                path = aws_path(where)
                expected = f"Value {java_str(bad)} at '{path}' failed to satisfy constraint: {constraint}"
                yield pytest.param(operation, where, bad, expected, id=f"{operation}:{path or '.'}:{label}")


def aws_path(body_path: tuple) -> str:
    path = ""
    for key in body_path:
        path = f"{path}.{key + 1}.member" if isinstance(key, int) else member_path(path, key)
    return path


def _get(body, body_path):
    for key in body_path:
        body = body[key]
    return body


def _set(body, body_path, value):
    for key in body_path[:-1]:
        body = body[key]
    if value is None:
        del body[body_path[-1]]
    else:
        body[body_path[-1]] = value


@pytest.mark.parametrize("operation", sorted(FULL_BODIES))
def test_full_bodies_are_valid_and_use_every_member(operation):
    shape = operation_model(operation).input_shape
    body = FULL_BODIES[operation]
    assert VALIDATOR.errors(shape, body) == []
    for body_path, path, member in leaves(shape, body):  # leaves() indexes every member: KeyError if absent
        pass


@pytest.mark.parametrize("operation, body_path, value, expected", list(generate_cases()))
def test_each_model_constraint_is_enforced(operation, body_path, value, expected):
    body = copy.deepcopy(FULL_BODIES[operation])
    _set(body, body_path, value)
    shape = operation_model(operation).input_shape
    errors = VALIDATOR.errors(shape, body)
    assert any(error.startswith(expected) for error in errors), errors
    with pytest.raises(ValidationException) as caught:
        VALIDATOR.validate(operation, body)
    count = len(errors)
    assert caught.value.message == f"{count} validation error{'s' if count > 1 else ''} detected: " + "; ".join(errors)


def test_the_aws_message_word_for_word():
    body = make_body("bad name")
    with pytest.raises(ValidationException) as caught:
        VALIDATOR.validate("CreateCompilationJob", body)
    assert caught.value.message == (
        "1 validation error detected: Value 'bad name' at 'compilationJobName' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"
    )


def test_errors_are_all_collected_and_counted():
    body = make_body("a" * 64, OutputConfig=None)
    with pytest.raises(ValidationException) as caught:
        VALIDATOR.validate("CreateCompilationJob", body)
    message = caught.value.message
    assert message.startswith("3 validation errors detected: ")
    assert "Member must have length less than or equal to 63" in message
    assert "Value null at 'outputConfig' failed to satisfy constraint: Member must not be null" in message
    assert message.count("; Value ") == 2


def test_max_pending_time_bounds_come_from_the_model():
    meta = operation_model("CreateCompilationJob").input_shape.members["StoppingCondition"].members[
        "MaxPendingTimeInSeconds"
    ].metadata
    low, high = meta["min"], meta["max"]
    for value, ok in ((low - 1, False), (low, True), (high, True), (high + 1, False)):
        body = make_body(StoppingCondition={"MaxPendingTimeInSeconds": value})
        errors = VALIDATOR.errors(operation_model("CreateCompilationJob").input_shape, body)
        assert (errors == []) is ok, (value, errors)


@pytest.mark.parametrize(
    "tags, ok",
    [
        ([], True),
        ([{"Key": f"k{i}", "Value": "v"} for i in range(50)], True),
        ([{"Key": f"k{i}", "Value": "v"} for i in range(51)], False),
        ([{"Key": "k" * 128, "Value": "v" * 256}], True),
        ([{"Key": "k" * 129, "Value": "v"}], False),
        ([{"Key": "k", "Value": "v" * 257}], False),
        ([{"Key": "k", "Value": ""}], True),
        ([{"Key": "", "Value": "v"}], False),
        ([{"Key": "név:a/b=c+d-e@f_g.h i", "Value": "日本 ٣"}], True),  # \p{L}\p{Z}\p{N} are Unicode
        ([{"Key": "a#b", "Value": "v"}], False),
        ([{"Key": "k", "Value": "v;"}], False),
        ([{"Key": "k"}], False),
        ([None], False),
        (["k=v"], False),
    ],
)
def test_tag_rules(tags, ok):
    errors = VALIDATOR.errors(operation_model("CreateCompilationJob").input_shape, make_body(Tags=tags))
    assert (errors == []) is ok, errors


def test_list_values_are_shown_as_java_lists():
    groups = [f"sg-{i}" for i in range(6)]
    body = make_body(VpcConfig={"SecurityGroupIds": groups, "Subnets": ["s-1"]})
    errors = VALIDATOR.errors(operation_model("CreateCompilationJob").input_shape, body)
    assert errors == [
        "Value '[sg-0, sg-1, sg-2, sg-3, sg-4, sg-5]' at 'vpcConfig.securityGroupIds' failed to satisfy "
        "constraint: Member must have length less than or equal to 5"
    ]


def test_null_optional_members_are_absent_members():
    body = make_body(Tags=None, VpcConfig=None)
    body["ModelPackageVersionArn"] = None
    body["OutputConfig"]["CompilerOptions"] = None
    assert VALIDATOR.errors(operation_model("CreateCompilationJob").input_shape, body) == []


@pytest.mark.parametrize("body", [None, [], "x", 5])
def test_a_body_must_be_an_object(body):
    with pytest.raises(ValidationException, match="must be a JSON object"):
        VALIDATOR.validate("DescribeCompilationJob", body)


def test_relaxed_uri_pattern_is_the_one_enforced_and_shown():
    strict = ShapeValidator()
    shape = operation_model("CreateCompilationJob").input_shape
    body = make_body(InputConfig={"S3Uri": "file:///data/model.onnx", "Framework": "ONNX"})
    assert VALIDATOR.errors(shape, body) == []
    assert strict.errors(shape, body) == [
        "Value 'file:///data/model.onnx' at 'inputConfig.s3Uri' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: ^(https|s3)://([^/]+)/?(.*)$"
    ]


@pytest.mark.parametrize(
    "value, expected",
    [
        (1_700_000_000, 1_700_000_000.0),
        (1_700_000_000.25, 1_700_000_000.25),
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20+00:00", 1_700_000_000.0),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000.0),
        ("2023-11-14T22:13:20", 1_700_000_000.0),  # no zone: UTC
        (dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.timezone.utc), 1_700_000_000.0),
    ],
)
def test_timestamps_accept_epoch_seconds_and_iso_8601(value, expected):
    assert parse_timestamp(value) == expected
    assert VALIDATOR.errors(operation_model("ListCompilationJobs").input_shape, {"CreationTimeAfter": value}) == []


@pytest.mark.parametrize("value", ["tomorrow", "", True, None, [], float("inf")])
def test_bad_timestamps(value):
    with pytest.raises((TypeError, ValueError)):
        parse_timestamp(value)
