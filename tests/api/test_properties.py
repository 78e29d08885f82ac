"""Property tests: whatever a caller sends, the answer is a dict or one of the API's errors.

Malformed requests (any JSON at all, or a valid body with one member broken) must come back
as ValidationException, never as a KeyError, TypeError or the like from deep inside.
"""
from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.api import CompilationService
from agent.api.shapes import ShapeValidator, operation_model
from agent.api.validation import PATTERN_OVERRIDES
from agent.config import AgentConfig
from agent.errors import ResourceInUse, ResourceNotFound, ValidationException
from agent.jobs.store import JobStore

from tests.api.helpers import ACCOUNT, REGION, X86_TARGETS, FakeRunner, make_body

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def near_values(shape) -> st.SearchStrategy[Any]:
    """Values close to the model's limits for `shape`: the likeliest to slip through."""
    meta = shape.metadata
    options: list[st.SearchStrategy[Any]] = [json_values]
    if shape.type_name == "string":
        low, high = meta.get("min", 0), meta.get("max", 64)
        options.append(st.integers(max(low - 1, 0), min(high + 1, 3000)).map(lambda n: "a" * n))
        if "enum" in meta:
            options.append(st.sampled_from(meta["enum"] + [m.lower() for m in meta["enum"]]))
    if shape.type_name == "integer":
        edges = [meta.get("min", 0) - 1, meta.get("min", 0), meta.get("max", 2**31) , meta.get("max", 2**31) + 1]
        options.append(st.sampled_from(edges))
    return st.one_of(options)


def member_paths(shape, value, path=()):
    yield path, shape
    if shape.type_name == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            yield from member_paths(member, value.get(name), path + (name,))
    elif shape.type_name == "list" and isinstance(value, list) and value:
        yield from member_paths(shape.member, value[0], path + (0,))


FULL = make_body(
    VpcConfig={"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1"]},
    Tags=[{"Key": "k", "Value": "v"}],
)
FULL["OutputConfig"]["CompilerOptions"] = '{"mcpu": "skylake"}'
PATHS = [p for p in member_paths(operation_model("CreateCompilationJob").input_shape, FULL) if p[0]]


@st.composite
def broken_create_bodies(draw) -> dict[str, Any]:
    body = copy.deepcopy(FULL)
    for _ in range(draw(st.integers(1, 3))):
        path, shape = draw(st.sampled_from(PATHS))
        target = body
        for key in path[:-1]:
            if isinstance(target, dict) and isinstance(target.get(key), (dict, list)):
                target = target[key]
            elif isinstance(target, list) and isinstance(key, int) and target and isinstance(target[0], (dict, list)):
                target = target[0]
            else:
                break
        else:
            action = draw(st.sampled_from(["replace", "delete", "add-unknown"]))
            if isinstance(target, dict):
                if action == "delete":
                    target.pop(path[-1], None)
                elif action == "add-unknown":
                    target[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
                else:
                    target[path[-1]] = draw(near_values(shape))
            elif isinstance(target, list) and target:
                target[0] = draw(near_values(shape))
    return body


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One service for every example (hypothesis runs many per test); no queue limit to hit."""
    state = tmp_path_factory.mktemp("properties")
    store = JobStore(state / "jobs.sqlite3")
    config = AgentConfig(state_dir=state, region=REGION, account=ACCOUNT, queue_limit=10**9)
    yield CompilationService(store, FakeRunner(), config, target_check=X86_TARGETS)
    store.close()


def outcome(service: CompilationService, operation: str, body: Any, allowed: tuple[type, ...]) -> Any:
    try:
        answer = service.call(operation, body)
    except allowed as exc:
        assert exc.message and json.dumps(exc.to_body())
        return exc
    assert isinstance(answer, dict)
    return answer


@SETTINGS
@given(broken_create_bodies())
def test_broken_create_bodies_are_validation_errors(shared, body):
    name = body.get("CompilationJobName")
    taken = isinstance(name, str) and shared.store.find(name) is not None
    result = outcome(shared, "CreateCompilationJob", body, (ValidationException,) + ((ResourceInUse,) if taken else ()))
    if isinstance(result, dict):  # accepted: then it really is valid, and was recorded as sent
        validator = ShapeValidator(pattern_overrides=PATTERN_OVERRIDES)
        assert validator.errors(operation_model("CreateCompilationJob").input_shape, body) == []
        assert shared.store.get(name).request == without_nulls(body)
        shared.store.delete(name)  # keep the name free for later examples


OPERATIONS = sorted(CompilationService.OPERATIONS)
SOME_MEMBERS = ["CompilationJobName", "NextToken", "MaxResults", "SortBy", "CreationTimeAfter", "RoleArn"]


@SETTINGS
@given(st.sampled_from(OPERATIONS), json_values | st.dictionaries(st.sampled_from(SOME_MEMBERS), json_values))
def test_any_json_body_is_answered_or_refused_cleanly(shared, operation, body):
    result = outcome(shared, operation, body, (ValidationException, ResourceNotFound))
    if isinstance(result, dict) and operation == "CreateCompilationJob":
        shared.store.delete(body["CompilationJobName"])


@SETTINGS
@given(st.text(max_size=200))
def test_any_next_token_is_accepted_or_invalid(shared, token):
    result = outcome(shared, "ListCompilationJobs", {"NextToken": token}, (ValidationException,))
    if isinstance(result, ValidationException):
        assert result.message == "Invalid pagination token" or "nextToken" in result.message
