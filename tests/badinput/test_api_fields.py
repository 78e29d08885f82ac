"""Every CreateCompilationJob member, broken every way botocore's model says it can be, over
the real HTTP endpoint and the real MQTT binding.

The mutations are derived from the service model itself (agent/api/shapes.py reads it): for
each member of the input shape, present in a valid body or not, a value of the wrong type, one
too long or too short, one that breaks its pattern or enum, one past its numeric bounds, the
member left out when it is required, a list item that is null, and an unknown member in every
structure. Hypothesis combines one to three of them (on members none of which holds another)
into one body. Every such body must be refused with a ValidationException that names each
broken member by AWS's path, the agent must still answer ListCompilationJobs, and nothing may
be stored. tests/api/test_properties.py already throws arbitrary JSON at the service in-process;
this adds the model-derived catalogue, the transports, and the store.

Neo's rules beyond the model (either/or members, bounds, the JSON inside DataInputConfig and
CompilerOptions, this device's targets) have their own table below.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.api.javaregex import compile_pattern
from agent.api.shapes import INTEGER_BOUNDS, member_path, operation_model
from agent.api.validation import PATTERN_OVERRIDES
from tests.badinput.conftest import http_error, mqtt_error, tally, valid_body

pytestmark = pytest.mark.badinput

EXAMPLES = 250  # combined mutations per run; each goes over HTTP and over MQTT
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

DELETE = object()  # the mutation's value: leave the member out


@dataclasses.dataclass(frozen=True)
class Mutation:
    path: tuple[Any, ...]  # keys (and list indexes) into the body
    kind: str
    value: Any  # DELETE to leave the member out
    where: str  # the member's path as AWS's messages spell it

    def apply(self, body: dict[str, Any]) -> None:
        target = body
        for key in self.path[:-1]:
            target = target[key]
        if self.value is DELETE:
            del target[self.path[-1]]
        else:
            target[self.path[-1]] = copy.deepcopy(self.value)

    def __repr__(self) -> str:  # hypothesis prints it for a failing example
        value = "<deleted>" if self.value is DELETE else repr(self.value)[:60]
        return f"Mutation({self.kind} at {self.where}: {value})"


WRONG_TYPES = {
    "string": [7, True, ["x"], {"k": "v"}, 1.5],
    "integer": ["12", 1.5, True, [1], {"n": 1}],
    "long": ["12", 1.5, False, [1]],
    "boolean": ["true", 1],
    "timestamp": ["yesterday", True, [1]],
    "structure": ["text", [1], 5],
    "list": ["text", {"k": "v"}, 5],
    "map": ["text", [1], 5],
}
# Strings likeliest to slip past a pattern: empty, blank, control and odd characters, paths.
PATTERN_CANDIDATES = ["", " ", "!", "\x00", "a b", "../../etc/passwd", "\ud800", "é", "a\nb", "$(reboot)", "ﬁ"]


def leaf_mutations(shape, path: tuple[Any, ...], where: str) -> Iterator[Mutation]:
    """Every way to break one member whatever its value was."""
    for value in WRONG_TYPES.get(shape.type_name, []):
        yield Mutation(path, "wrong type", value, where)
    meta = shape.metadata
    if shape.type_name in ("integer", "long"):
        low, high = INTEGER_BOUNDS[shape.type_name]
        yield Mutation(path, "wrong type", high + 1, where)  # past Java's int or long
        if "min" in meta:
            yield Mutation(path, "below min", meta["min"] - 1, where)
        if "max" in meta:
            yield Mutation(path, "above max", meta["max"] + 1, where)
    if shape.type_name == "string":
        low, high = meta.get("min", 0), meta.get("max")
        if high is not None:
            yield Mutation(path, "too long", "a" * (high + 1), where)
        if low > 0:
            yield Mutation(path, "too short", "a" * (low - 1), where)
        pattern = PATTERN_OVERRIDES.get(shape.name, meta.get("pattern"))
        if pattern is not None:
            regex = compile_pattern(pattern)
            for text in PATTERN_CANDIDATES:
                if low <= len(text) <= (high or len(text)) and not regex.fullmatch(text):
                    yield Mutation(path, "breaks pattern", text, where)
        if "enum" in meta:
            yield Mutation(path, "not in enum", "NOT_AN_ENUM_VALUE", where)
            yield Mutation(path, "not in enum", meta["enum"][0].swapcase(), where)
    if shape.type_name == "list":
        if meta.get("max") is not None:
            yield Mutation(path, "list too long", ["a"] * (meta["max"] + 1), where)
        if meta.get("min", 0) > 0:
            yield Mutation(path, "list too short", [], where)


def catalogue(shape, value: Any, path: tuple[Any, ...] = (), where: str = "") -> Iterator[Mutation]:
    """Every mutation of every member under `shape`, for the valid `value` it has now."""
    if shape.type_name == "structure":
        yield Mutation(path + ("UnknownMember",), "unknown member", "x", member_path(where, "UnknownMember"))
        for name, member in shape.members.items():
            child_path, child_where = path + (name,), member_path(where, name)
            child = value.get(name)
            yield from leaf_mutations(member, child_path, child_where)
            if child is None:
                continue
            if name in shape.required_members:
                yield Mutation(child_path, "missing required", DELETE, child_where)
            yield from catalogue(member, child, child_path, child_where)
    elif shape.type_name == "list" and value:
        item_path, item_where = path + (0,), f"{where}.1.member"
        yield Mutation(item_path, "null list item", None, item_where)
        yield from leaf_mutations(shape.member, item_path, item_where)
        yield from catalogue(shape.member, value[0], item_path, item_where)


CREATE_SHAPE = operation_model("CreateCompilationJob").input_shape
CATALOGUE = list(catalogue(CREATE_SHAPE, valid_body()))
KINDS = sorted({m.kind for m in CATALOGUE})


def _nested(a: Mutation, b: Mutation) -> bool:
    shorter, longer = sorted((a.path, b.path), key=len)
    return longer[:len(shorter)] == shorter


@st.composite
def broken_bodies(draw) -> tuple[dict[str, Any], list[Mutation]]:
    """A valid body with one to three catalogue mutations, on members none of which holds another."""
    chosen: list[Mutation] = []
    for _ in range(draw(st.integers(1, 3))):
        mutation = draw(st.sampled_from(CATALOGUE))
        if not any(_nested(mutation, other) for other in chosen):
            chosen.append(mutation)
    body = valid_body(f"fuzz-{draw(st.integers(0, 10**9))}")
    for mutation in chosen:
        mutation.apply(body)
    return body, chosen


def test_the_catalogue_covers_every_member_and_every_kind():
    wheres = {m.where for m in CATALOGUE}
    for name, member in CREATE_SHAPE.members.items():
        assert member_path("", name) in wheres
    assert {"wrong type", "too long", "too short", "breaks pattern", "not in enum", "below min", "above max",
            "missing required", "unknown member", "null list item", "list too long", "list too short"} <= set(KINDS)
    # Nested members too: a list item's structure, and the structures under OutputConfig.
    assert "tags.1.member.key" in wheres and "outputConfig.targetPlatform" in wheres


def test_the_valid_body_is_accepted_over_both_transports(served):
    before = served.job_count()
    status, _, answer = served.post(json.dumps(valid_body("fuzz-valid-http")).encode())
    assert status == 200 and answer["CompilationJobArn"].endswith("/fuzz-valid-http")
    topic, answer = served.publish(json.dumps(valid_body("fuzz-valid-mqtt")).encode())
    assert topic.endswith("/accepted") and answer["CompilationJobArn"].endswith("/fuzz-valid-mqtt")
    assert served.job_count() == before + 2


def expected_in(message: str, mutations: list[Mutation]) -> None:
    for mutation in mutations:
        assert f"at '{mutation.where}' failed to satisfy constraint" in message, (mutation, message)


@SETTINGS
@given(broken_bodies())
def test_each_broken_member_is_named_in_a_validation_exception(served, case):
    body, mutations = case
    data = json.dumps(body).encode()
    before = served.job_count()

    status, code, message = http_error(served.post(data))
    assert (status, code) == (400, "ValidationException"), message
    expected_in(message, mutations)

    code, message = mqtt_error(served.publish(data))
    assert code == "ValidationException", message
    expected_in(message, mutations)

    assert served.job_count() == before, "a refused request left a job behind"
    tally("API requests: CreateCompilationJob with 1-3 members broken per the service model, over HTTP", 1)
    tally("API requests: CreateCompilationJob with 1-3 members broken per the service model, over MQTT", 1)


# --- Neo's rules beyond the model --------------------------------------------------------------
def _set(path: str, value: Any):
    def change(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = body
        for key in parents:
            target = target.setdefault(key, {})
        if value is DELETE:
            target.pop(last, None)
        else:
            target[last] = value
    return change


NEO_RULES = [
    # (what, changes, words the message must hold)
    ("TargetDevice and TargetPlatform both", [_set("OutputConfig.TargetPlatform", {"Os": "LINUX", "Arch": "X86_64"})],
     ["TargetDevice", "TargetPlatform", "both"]),
    ("neither TargetDevice nor TargetPlatform", [_set("OutputConfig.TargetDevice", DELETE)], ["neither"]),
    ("ModelPackageVersionArn beside InputConfig",
     [_set("ModelPackageVersionArn", "arn:aws:sagemaker:us-west-2:123456789012:model-package/p/1")],
     ["ModelPackageVersionArn", "both"]),
    ("ModelPackageVersionArn instead of InputConfig",
     [_set("ModelPackageVersionArn", "arn:aws:sagemaker:us-west-2:123456789012:model-package/p/1"),
      _set("InputConfig", DELETE)], ["ModelPackageVersionArn"]),
    ("MaxRuntimeInSeconds past 28 days", [_set("StoppingCondition.MaxRuntimeInSeconds", 28 * 86400 + 1)],
     ["MaxRuntimeInSeconds"]),
    ("MaxWaitTimeInSeconds below MaxRuntimeInSeconds", [_set("StoppingCondition.MaxWaitTimeInSeconds", 60)],
     ["MaxWaitTimeInSeconds"]),
    ("FrameworkVersion for ONNX", [_set("InputConfig.FrameworkVersion", "1.13")], ["FrameworkVersion"]),
    ("a framework this device cannot compile", [_set("InputConfig.Framework", "KERAS")], ["KERAS"]),
    ("a FrameworkVersion newer than this device's torch",
     [_set("InputConfig.Framework", "PYTORCH"), _set("InputConfig.FrameworkVersion", "9.9"),
      _set("InputConfig.DataInputConfig", "[[1, 3]]")], ["FrameworkVersion", "9.9"]),
    ("S3Uri that is no .tar.gz or .onnx", [_set("InputConfig.S3Uri", "s3://models/m/model.zip")], ["S3Uri"]),
    ("DataInputConfig that is not JSON", [_set("InputConfig.DataInputConfig", "{data: [1, 3]")], ["DataInputConfig"]),
    ("DataInputConfig that is a list for ONNX", [_set("InputConfig.DataInputConfig", "[[1, 3, 224, 224]]")],
     ["DataInputConfig"]),
    ("DataInputConfig with a zero dim", [_set("InputConfig.DataInputConfig", '{"data": [1, 0, 224, 224]}')],
     ["DataInputConfig", "'data'", "positive"]),
    ("DataInputConfig asking for terabytes (10^18 elements)",
     [_set("InputConfig.DataInputConfig", '{"data": [1000000, 1000000, 1000000]}')],
     ["DataInputConfig", "'data'", "1000000000000000000 elements"]),
    ("DataInputConfig with inputs too large together",
     [_set("InputConfig.DataInputConfig", json.dumps({f"in{i}": [1, 1 << 30] for i in range(3)}))],
     ["DataInputConfig", "together"]),
    ("DataInputConfig with a dim of 1e999", [_set("InputConfig.DataInputConfig", '{"data": [1, 1e999]}')],
     ["DataInputConfig", "positive integers"]),
    ("DataInputConfig with a dim of 5000 digits",
     [_set("InputConfig.DataInputConfig", '{"data": [1%s]}' % ("0" * 5000))],
     ["DataInputConfig must be JSON"]),
    ("DataInputConfig nested 16,000 deep", [_set("InputConfig.DataInputConfig", "[" * 16000 + "]" * 300)],
     ["DataInputConfig must be JSON"]),
    ("CompilerOptions nested 1,000 deep", [_set("OutputConfig.CompilerOptions", "[" * 1000 + "]" * 24)],
     ["CompilerOptions"]),
    ("CompilerOptions that are not JSON", [_set("OutputConfig.CompilerOptions", "mcpu=skylake")], ["CompilerOptions"]),
    ("CompilerOptions with a key this target does not take",
     [_set("OutputConfig.CompilerOptions", '{"gpu-code": "sm_72"}')], ["gpu-code"]),
    ("a TargetDevice this device is not", [_set("OutputConfig.TargetDevice", "jetson_nano")], ["jetson_nano"]),
    ("a TargetPlatform this device is not",
     [_set("OutputConfig.TargetDevice", DELETE),
      _set("OutputConfig.TargetPlatform", {"Os": "ANDROID", "Arch": "ARM64"})],
     ["ANDROID"]),
]


@pytest.mark.parametrize("what, changes, words", NEO_RULES, ids=[rule[0] for rule in NEO_RULES])
def test_neo_rules_beyond_the_model_are_validation_exceptions_naming_the_member(served, what, changes, words):
    body = valid_body("fuzz-neo-rule")
    for change in changes:
        change(body)
    data = json.dumps(body).encode()
    before = served.job_count()
    status, code, message = http_error(served.post(data))
    assert (status, code) == (400, "ValidationException"), message
    mqtt_code, mqtt_message = mqtt_error(served.publish(data))
    assert (mqtt_code, mqtt_message) == (code, message)
    for word in words:
        assert word in message, (word, message)
    assert served.job_count() == before
    tally("API requests: valid per the model, broken per Neo's rules or this device (HTTP and MQTT)", 2)


OTHER_OPERATIONS = {
    "DescribeCompilationJob": {"CompilationJobName": "fuzz-other"},
    "StopCompilationJob": {"CompilationJobName": "fuzz-other"},
    "DeleteCompilationJob": {"CompilationJobName": "fuzz-other"},
    "ListCompilationJobs": {"MaxResults": 10, "SortBy": "Name", "StatusEquals": "FAILED"},
}
OTHER_CATALOGUE = [(operation, mutation) for operation, body in OTHER_OPERATIONS.items()
                   for mutation in catalogue(operation_model(operation).input_shape, body)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(OTHER_CATALOGUE))
def test_the_other_operations_refuse_broken_members_too(served, case):
    operation, mutation = case
    body = copy.deepcopy(OTHER_OPERATIONS[operation])
    mutation.apply(body)
    data = json.dumps(body).encode()
    status, code, message = http_error(served.post(data, operation))
    assert (status, code) == (400, "ValidationException"), message
    expected_in(message, [mutation])
    code, message = mqtt_error(served.publish(data, operation), operation)
    assert code == "ValidationException"
    expected_in(message, [mutation])
    tally("API requests: the other four operations with a member broken per the model, over HTTP", 1)
    tally("API requests: the other four operations with a member broken per the model, over MQTT", 1)
