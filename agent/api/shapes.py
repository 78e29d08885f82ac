"""Request validation driven by botocore's `sagemaker` service model.

The model is the one source of members, types and constraints: nothing here names a
SageMaker member. `ShapeValidator` walks an operation's input shape and collects every broken
rule, then raises one ValidationException worded as AWS words it:

    2 validation errors detected: Value 'bad name' at 'compilationJobName' failed to satisfy
    constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$;
    Value null at 'outputConfig' failed to satisfy constraint: Member must not be null

Paths lower-case each member's first letter and join with dots; list items read
`tags.1.member.key` (1-based), as AWS's are.

A message stays small whatever the body: it counts every broken rule but lists the first
MAX_LISTED_ERRORS, and shows a value to MAX_SHOWN_DEPTH levels and MAX_SHOWN_CHARS characters.
Without that, 1 MiB of unknown members came back as an 18 MB message, and a value nested a few
hundred levels deep overflowed the stack while being shown.
"""
from __future__ import annotations

import datetime as dt
import functools
import math
from typing import Any, Mapping

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape

from agent.api.javaregex import compile_pattern
from agent.errors import ValidationException

# The model's `integer` and `long` are Java's; a wider number would not deserialize at AWS.
INTEGER_BOUNDS = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
MAX_LISTED_ERRORS = 10
MAX_SHOWN_DEPTH = 8
MAX_SHOWN_CHARS = 1024


@functools.lru_cache(maxsize=None)
def service_model() -> ServiceModel:
    """botocore's sagemaker model, loaded once (it is a few MB of JSON)."""
    return botocore.session.get_session().get_service_model("sagemaker")


def operation_model(name: str) -> OperationModel:
    return service_model().operation_model(name)


def member_path(parent: str, member: str) -> str:
    """AWS's path spelling: first letter lower-cased, dots for nesting."""
    name = member[:1].lower() + member[1:]
    return f"{parent}.{name}" if parent else name


def java_str(value: Any) -> str:
    """A value as Java's toString would show it in AWS's messages: 'text', '5', null.

    Cut at MAX_SHOWN_CHARS characters and MAX_SHOWN_DEPTH levels of nesting ("..." marks a cut).
    """
    if value is None:
        return "null"
    text = _java(value, MAX_SHOWN_DEPTH)
    return f"'{text[:MAX_SHOWN_CHARS]}...'" if len(text) > MAX_SHOWN_CHARS else f"'{text}'"


def _java(value: Any, depth: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        if depth <= 0:
            return "[...]"
        return "[" + ", ".join(_java(v, depth - 1) for v in value) + "]"
    if isinstance(value, dict):
        if depth <= 0:
            return "{...}"
        return "{" + ", ".join(f"{k}={_java(v, depth - 1)}" for k, v in value.items()) + "}"
    return str(value)


def format_errors(errors: list[str], unlisted: int = 0) -> str:
    """AWS's sentence: the count of every broken rule, then the rules listed (the first few)."""
    count = len(errors) + unlisted
    more = f"; and {unlisted} more" if unlisted else ""
    return f"{count} validation error{'' if count == 1 else 's'} detected: " + "; ".join(errors) + more


class _Listed(list):
    """The errors `validate` collects: the first MAX_LISTED_ERRORS sentences; the rest counted."""

    def __init__(self) -> None:
        super().__init__()
        self.unlisted = 0


def parse_timestamp(value: Any) -> float:
    """Epoch seconds from what SageMaker's JSON protocol accepts: epoch seconds or ISO-8601.

    Raises ValueError (or TypeError) for anything else. An ISO time without a zone is UTC.
    """
    if isinstance(value, bool):
        raise TypeError("a boolean is not a timestamp")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError("timestamp must be finite")
        return seconds
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str):
        moment = dt.datetime.fromisoformat(value.strip())
    else:
        raise TypeError(f"{type(value).__name__} is not a timestamp")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def project(shape: Shape, value: Any) -> Any:
    """`value` with only the members `shape` defines (and no nulls): what an answer may carry."""
    if shape.type_name == "structure" and isinstance(value, dict):
        return {
            name: project(shape.members[name], member)
            for name, member in value.items()
            if name in shape.members and member is not None
        }
    if shape.type_name == "list" and isinstance(value, list):
        return [project(shape.member, item) for item in value]
    if shape.type_name == "map" and isinstance(value, dict):
        return {key: project(shape.value, item) for key, item in value.items()}
    return value


class ShapeValidator:
    """Checks request bodies against the model's input shapes.

    `pattern_overrides` maps a shape name to a pattern used instead of the model's (the agent
    relaxes S3Uri to allow file:// URIs; see agent.api.validation). The message then shows
    the pattern actually enforced.
    """

    def __init__(self, model: ServiceModel | None = None, pattern_overrides: Mapping[str, str] | None = None):
        self.model = model or service_model()
        self.pattern_overrides = dict(pattern_overrides or {})

    def validate(self, operation_name: str, body: Any) -> None:
        """Raise one ValidationException listing every broken rule, or return None."""
        shape = self.model.operation_model(operation_name).input_shape
        if not isinstance(body, dict):
            raise ValidationException(f"The request body must be a JSON object, not {_type_word(body)}.")
        errors = _Listed()
        self._check(shape, body, "", errors)
        if errors or errors.unlisted:
            raise ValidationException(format_errors(errors, errors.unlisted))

    def errors(self, shape: Shape, value: Any, path: str = "") -> list[str]:
        """Every rule of `shape` that `value` breaks, as AWS's sentences."""
        found: list[str] = []
        self._check(shape, value, path, found)
        return found

    # --- the walk ---------------------------------------------------------------------
    def _check(self, shape: Shape, value: Any, path: str, out: list[str]) -> None:
        check = getattr(self, f"_check_{shape.type_name}", None)
        if check is None:  # blob/document: nothing this API uses; accept what JSON gave
            return
        check(shape, value, path, out)

    def _fail(self, out: list[str], value: Any, path: str, constraint: str) -> None:
        if isinstance(out, _Listed) and len(out) >= MAX_LISTED_ERRORS:
            out.unlisted += 1
            return
        out.append(f"Value {java_str(value)} at '{path}' failed to satisfy constraint: {constraint}")

    def _check_structure(self, shape: Shape, value: Any, path: str, out: list[str]) -> None:
        if not isinstance(value, dict):
            return self._fail(out, value, path, "Member must be of type structure")
        for name in shape.required_members:
            if value.get(name) is None:
                self._fail(out, None, member_path(path, name), "Member must not be null")
        for name, item in value.items():
            member = shape.members.get(name) if isinstance(name, str) else None
            if member is None:
                known = ", ".join(shape.members)
                self._fail(
                    out, item, member_path(path, str(name)),
                    f"Member is not part of {shape.name}, whose members are [{known}]",
                )
            elif item is not None:
                self._check(member, item, member_path(path, name), out)

    def _check_list(self, shape: Shape, value: Any, path: str, out: list[str]) -> None:
        if not isinstance(value, list):
            return self._fail(out, value, path, "Member must be of type list")
        self._check_length(shape, value, path, out)
        for index, item in enumerate(value, start=1):
            item_path = f"{path}.{index}.member"
            if item is None:
                self._fail(out, None, item_path, "Member must not be null")
            else:
                self._check(shape.member, item, item_path, out)

    def _check_map(self, shape: Shape, value: Any, path: str, out: list[str]) -> None:
        if not isinstance(value, dict):
            return self._fail(out, value, path, "Member must be of type map")
        self._check_length(shape, value, path, out)
        for key, item in value.items():
            self._check(shape.key, key, f"{path}.key", out)
            self._check(shape.value, item, f"{path}.{key}", out)

    def _check_string(self, shape: Shape, value: Any, path: str, out: list[str]) -> None:
        if not isinstance(value, str):
            return self._fail(out, value, path, "Member must be of type string")
        self._check_length(shape, value, path, out)
        pattern = self.pattern_overrides.get(shape.name, shape.metadata.get("pattern"))
        if pattern is not None and not compile_pattern(pattern).fullmatch(value):
            shown = _anchored(pattern)
            self._fail(out, value, path, f"Member must satisfy regular expression pattern: {shown}")
        enum = shape.metadata.get("enum")
        if enum and value not in enum:
            self._fail(out, value, path, f"Member must satisfy enum value set: [{', '.join(enum)}]")

    def _check_integer(self, shape: Shape, value: Any, path: str, out: list[str]) -> None:
        low, high = INTEGER_BOUNDS[shape.type_name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return self._fail(out, value, path, f"Member must be of type {shape.type_name}")
        self._check_range(shape, value, path, out)

    _check_long = _check_integer

    def _check_double(self, shape: Shape, value: Any, path: str, out: list[str]) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return self._fail(out, value, path, f"Member must be of type {shape.type_name}")
        self._check_range(shape, value, path, out)

    _check_float = _check_double

    def _check_boolean(self, shape: Shape, value: Any, path: str, out: list[str]) -> None:
        if not isinstance(value, bool):
            self._fail(out, value, path, "Member must be of type boolean")

    def _check_timestamp(self, shape: Shape, value: Any, path: str, out: list[str]) -> None:
        try:
            parse_timestamp(value)
        except (TypeError, ValueError, OverflowError):
            self._fail(out, value, path, "Member must be a timestamp: epoch seconds or an ISO-8601 string")

    def _check_length(self, shape: Shape, value: Any, path: str, out: list[str]) -> None:
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if low is not None and len(value) < low:
            self._fail(out, value, path, f"Member must have length greater than or equal to {low}")
        if high is not None and len(value) > high:
            self._fail(out, value, path, f"Member must have length less than or equal to {high}")

    def _check_range(self, shape: Shape, value: Any, path: str, out: list[str]) -> None:
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if low is not None and value < low:
            self._fail(out, value, path, f"Member must have value greater than or equal to {low}")
        if high is not None and value > high:
            self._fail(out, value, path, f"Member must have value less than or equal to {high}")


def _anchored(pattern: str) -> str:
    """AWS's messages show patterns anchored; botocore's model has dropped the anchors."""
    return ("" if pattern.startswith("^") else "^") + pattern + ("" if pattern.endswith("$") else "$")


def _type_word(value: Any) -> str:
    return {list: "an array", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)
