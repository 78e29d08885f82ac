"""Neo's rules for CreateCompilationJob beyond what the service model can say.

agent.api.shapes has already checked members, types, lengths, patterns and enums; this module
checks how members relate (either/or, runtime bounds), what the JSON-in-a-string members hold
(DataInputConfig), and what this device can actually do (frameworks; targets and their
CompilerOptions through the device profiles, agent.device).
Each rule raises ValidationException with a message that names the member.

Documented extensions to SageMaker's rules:
- S3Uri and S3OutputLocation also accept `file://` URIs, for offline devices (RELAXED_URI_PATTERN),
  from the channels the agent's `file_uri_channels` setting names (by default the HTTP endpoint
  only): a file:// location reads or writes the agent user's files (check_file_uris).
- InputConfig.S3Uri may name a bare model file of its Framework (`.onnx`, `.pt`, `.pth`, `.pt2`,
  `.tflite`), not only a `.tar.gz` archive.
- Framework and FrameworkVersion are checked against what this device has installed
  (agent.compile.frontends): a Framework it cannot compile, or a FrameworkVersion newer than
  its own, is refused here rather than failing the job later.
"""
from __future__ import annotations

import json
from typing import Any, Callable
from urllib.parse import urlsplit

from agent.compile import frontends  # pure Python: the Framework table, no framework imported
from agent.compile.datainput import oversized  # pure Python: the input size bounds
from agent.errors import ValidationException
from agent.jobs.job import MAX_RUNTIME_LIMIT

# The model says (https|s3)://([^/]+)/?(.*); file:// is added for offline use. A file URI may
# have an empty host (file:///data/model.onnx).
RELAXED_URI_PATTERN = r"(https|s3)://([^/]+)/?(.*)|file://([^/]*)/(.*)"
PATTERN_OVERRIDES = {"S3Uri": RELAXED_URI_PATTERN}

ARCHIVE_SUFFIX = ".tar.gz"

# What this device compiles: the frontends whose packages are installed (agent.compile.frontends).
SUPPORTED_FRAMEWORKS = frontends.supported()
# Neo: "FrameworkVersion ... only for MXNet, PyTorch, TensorFlow and TFLite".
VERSIONED_FRAMEWORKS = frozenset({"MXNET", "PYTORCH", "TENSORFLOW", "TFLITE"})
# Neo: PyTorch alone may give DataInputConfig as a list of shapes.
LIST_SHAPE_FRAMEWORKS = frozenset({"PYTORCH"})



TargetCheck = Callable[[dict[str, Any]], None]


def device_target_check(*, allow_cross: bool = False, detection: Any = None) -> TargetCheck:
    """The default target hook: the device profiles (agent.device) decide.

    A request's TargetDevice or TargetPlatform must be this device (or, with the agent's
    cross_compile setting, any profile the agent can build for), and its CompilerOptions must be
    ones that profile accepts. The refusal says what this device is and what it compiles for.
    This device is detected once, at the first request (`detection` pins it, for tests).
    """
    from agent.device import api_target_check

    return api_target_check(detection, allow_cross=allow_cross)


def validate_create(body: dict[str, Any], target_check: TargetCheck) -> None:
    """Neo's rules for a CreateCompilationJob body that already satisfies the model; the
    target and its CompilerOptions are `target_check`'s (see device_target_check)."""
    _check_model_source(body)
    _check_stopping_condition(body.get("StoppingCondition") or {})
    _check_input_config(body["InputConfig"])
    _check_output_config(body["OutputConfig"])
    target_check(body["OutputConfig"])


def check_file_uris(body: dict[str, Any], channel: str, allowed: tuple[str, ...]) -> None:
    """A file:// S3Uri or S3OutputLocation only from a channel in `allowed` (the agent's
    file_uri_channels setting): from anywhere else it would reach the agent user's files."""
    if channel in allowed:
        return
    locations = (("InputConfig.S3Uri", (body.get("InputConfig") or {}).get("S3Uri")),
                 ("OutputConfig.S3OutputLocation", (body.get("OutputConfig") or {}).get("S3OutputLocation")))
    for member, uri in locations:
        if isinstance(uri, str) and urlsplit(uri).scheme.lower() == "file":  # as agent.storage.uri reads it
            where = f"from {', '.join(allowed)} only" if allowed else "from no channel"
            raise ValidationException(
                f"{member}: this agent takes file:// locations {where}, and this request came over {channel}; "
                "use an s3:// URI (the agent's file_uri_channels setting, NEO_AGENT_FILE_URI_CHANNELS, "
                "decides which channels may name the device's files)."
            )


def _check_model_source(body: dict[str, Any]) -> None:
    has_package = body.get("ModelPackageVersionArn") is not None
    has_input = body.get("InputConfig") is not None
    if has_package == has_input:
        which = "both" if has_package else "neither"
        raise ValidationException(
            f"Provide either a ModelPackageVersionArn or an InputConfig (exactly one); the request has {which}."
        )
    if has_package:
        raise ValidationException(
            "ModelPackageVersionArn is not supported on this device: it has no model registry. "
            "Provide an InputConfig with the model's S3Uri instead."
        )


def _check_stopping_condition(condition: dict[str, Any]) -> None:
    runtime = condition.get("MaxRuntimeInSeconds")
    wait = condition.get("MaxWaitTimeInSeconds")
    if runtime is not None and runtime > MAX_RUNTIME_LIMIT:
        raise ValidationException(
            f"StoppingCondition.MaxRuntimeInSeconds must be at most {MAX_RUNTIME_LIMIT} (28 days); "
            f"got {runtime}."
        )
    if runtime is not None and wait is not None and wait < runtime:
        raise ValidationException(
            f"StoppingCondition.MaxWaitTimeInSeconds ({wait}) must be greater than or equal to "
            f"MaxRuntimeInSeconds ({runtime})."
        )


def _check_input_config(config: dict[str, Any]) -> None:
    framework = config["Framework"]
    if config.get("FrameworkVersion") is not None and framework not in VERSIONED_FRAMEWORKS:
        raise ValidationException(
            f"InputConfig.FrameworkVersion is allowed only for {', '.join(sorted(VERSIONED_FRAMEWORKS))}; "
            f"Framework is {framework}."
        )
    problem = frontends.refusal(framework) or frontends.version_refusal(framework, config.get("FrameworkVersion"))
    if problem:
        raise ValidationException(problem)
    uri = config["S3Uri"]
    model_suffixes = frontends.FRONTENDS[framework].suffixes
    if not urlsplit(uri).path.lower().endswith((ARCHIVE_SUFFIX, *model_suffixes)):  # a presigned URL's query is ignored
        raise ValidationException(
            f"InputConfig.S3Uri must point to a gzip compressed tar archive (.tar.gz) or a "
            f"{frontends.FRONTENDS[framework].suffix_text()} file for Framework {framework}; got {uri}."
        )
    if config.get("DataInputConfig") is not None:
        parse_data_input_config(config["DataInputConfig"], framework)


def parse_data_input_config(text: str, framework: str) -> dict[str, list[int]] | list[list[int]]:
    """DataInputConfig's JSON: {"name": [1, 3, 224, 224], ...}, or [[...], ...] for PyTorch."""
    field = "InputConfig.DataInputConfig"
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply (16384 characters allow it)
        example = '{"input0": [1, 3, 224, 224]}'
        raise ValidationException(f"{field} must be JSON, e.g. {example}; got {text!r}.") from None
    if isinstance(value, list) and framework in LIST_SHAPE_FRAMEWORKS:
        shapes = list(enumerate(value))
    elif isinstance(value, dict):
        shapes = list(value.items())
    else:
        forms = "an object of input name to shape"
        if framework in LIST_SHAPE_FRAMEWORKS:
            forms += " or a list of shapes"
        raise ValidationException(f"{field} must be {forms} for {framework}; got {text!r}.")
    if not shapes:
        raise ValidationException(f"{field} must name at least one input.")
    for name, shape in shapes:
        if isinstance(name, str) and not name:
            raise ValidationException(f"{field} has an input with an empty name.")
        if not (
            isinstance(shape, list)
            and shape
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        ):
            raise ValidationException(
                f"{field}: the shape of input {name!r} must be a list of positive integers; "
                f"got {json.dumps(shape)}."
            )
    too_large = oversized(dict(shapes))  # terabytes of input are refused here, not in the job
    if too_large:
        raise ValidationException(f"{field}: {too_large}.")
    return value


def _check_output_config(config: dict[str, Any]) -> None:
    has_device = config.get("TargetDevice") is not None
    has_platform = config.get("TargetPlatform") is not None
    if has_device == has_platform:
        which = "both" if has_device else "neither"
        raise ValidationException(
            f"OutputConfig must have either a TargetDevice or a TargetPlatform (exactly one); it has {which}."
        )
