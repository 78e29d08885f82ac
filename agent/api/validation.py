"""Neo's rules for CreateCompilationJob beyond what the service model can say.

agent.api.shapes has already checked members, types, lengths, patterns and enums; this module
checks how members relate (either/or, runtime bounds), what the JSON-in-a-string members hold
(CompilerOptions, DataInputConfig), and what this device can actually do (frameworks, targets).
Each rule raises ValidationException with a message that names the member.

Documented extensions to SageMaker's rules:
- S3Uri and S3OutputLocation also accept `file://` URIs, for offline devices (RELAXED_URI_PATTERN).
- InputConfig.S3Uri may name a bare `.onnx` file, not only a `.tar.gz` archive.
"""
from __future__ import annotations

import dataclasses
import json
import platform
from typing import Any, Callable
from urllib.parse import urlsplit

from agent.compile import options as compiler_options
from agent.errors import ValidationException
from agent.jobs.job import MAX_RUNTIME_LIMIT

# The model says (https|s3)://([^/]+)/?(.*); file:// is added for offline use. A file URI may
# have an empty host (file:///data/model.onnx).
RELAXED_URI_PATTERN = r"(https|s3)://([^/]+)/?(.*)|file://([^/]*)/(.*)"
PATTERN_OVERRIDES = {"S3Uri": RELAXED_URI_PATTERN}

MODEL_SUFFIXES = (".tar.gz", ".onnx")

# What this agent's compiler front ends read today. It will grow (PYTORCH, TFLITE, ...).
SUPPORTED_FRAMEWORKS = ("ONNX",)
# Neo: "FrameworkVersion ... only for MXNet, PyTorch, TensorFlow and TFLite".
VERSIONED_FRAMEWORKS = frozenset({"MXNET", "PYTORCH", "TENSORFLOW", "TFLITE"})
# Neo: PyTorch alone may give DataInputConfig as a list of shapes.
LIST_SHAPE_FRAMEWORKS = frozenset({"PYTORCH"})



@dataclasses.dataclass(frozen=True)
class HostTargets:
    """What a host of one architecture can compile for, with its own CPU."""

    devices: frozenset[str]
    platforms: frozenset[tuple[str, str]]  # (Os, Arch), never with an Accelerator


# The one table of host-compatible targets; device profiles will replace it.
HOST_TARGETS = {
    "x86_64": HostTargets(
        devices=frozenset({"ml_m4", "ml_m5", "ml_c4", "ml_c5"}),
        platforms=frozenset({("LINUX", "X86_64")}),
    ),
    "aarch64": HostTargets(
        devices=frozenset(
            {"ml_m6g", "ml_c6g", "rasp4b", "jetson_tx1", "jetson_tx2", "jetson_nano", "jetson_xavier"}
        ),
        platforms=frozenset({("LINUX", "ARM64")}),
    ),
}
MACHINE_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}

TargetCheck = Callable[[dict[str, Any]], None]


def host_machine() -> str:
    machine = platform.machine().lower()
    return MACHINE_ALIASES.get(machine, machine)


def check_target(output_config: dict[str, Any], machine: str | None = None) -> None:
    """Refuse targets this host cannot compile for; the default target hook.

    Only CPU code for the host's own architecture is built here, so an accelerator or another
    architecture is refused with what this device is and what it can do instead.
    """
    machine = machine or host_machine()
    targets = HOST_TARGETS.get(machine, HostTargets(frozenset(), frozenset()))
    device = output_config.get("TargetDevice")
    target_platform = output_config.get("TargetPlatform") or {}
    if device is not None:
        if device in targets.devices:
            return
        wanted = f"TargetDevice {device}"
    else:
        key = (target_platform.get("Os"), target_platform.get("Arch"))
        if key in targets.platforms and not target_platform.get("Accelerator"):
            return
        wanted = "TargetPlatform " + _platform_text(target_platform)
    choices = [f"TargetDevice {d}" for d in sorted(targets.devices)]
    choices += [f"TargetPlatform {_platform_text({'Os': o, 'Arch': a})}" for o, a in sorted(targets.platforms)]
    can = f"; it compiles for {', '.join(choices)}" if choices else "; it has no known targets"
    raise ValidationException(f"This device is {machine}; {wanted} cannot be compiled on it{can}.")


def _platform_text(target_platform: dict[str, Any]) -> str:
    parts = [f"{k}: {target_platform[k]}" for k in ("Os", "Arch", "Accelerator") if target_platform.get(k)]
    return "{" + ", ".join(parts) + "}"


def validate_create(body: dict[str, Any], target_check: TargetCheck = check_target) -> None:
    """Neo's rules for a CreateCompilationJob body that already satisfies the model."""
    _check_model_source(body)
    _check_stopping_condition(body.get("StoppingCondition") or {})
    _check_input_config(body["InputConfig"])
    _check_output_config(body["OutputConfig"])
    target_check(body["OutputConfig"])


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
    if framework not in SUPPORTED_FRAMEWORKS:
        raise ValidationException(
            f"Framework {framework} is not supported on this device; "
            f"it compiles {', '.join(SUPPORTED_FRAMEWORKS)}."
        )
    uri = config["S3Uri"]
    if not urlsplit(uri).path.endswith(MODEL_SUFFIXES):  # the path, so a presigned URL's query is ignored
        raise ValidationException(
            "InputConfig.S3Uri must point to a gzip compressed tar archive (.tar.gz) or an .onnx file; "
            f"got {uri}."
        )
    if config.get("DataInputConfig") is not None:
        parse_data_input_config(config["DataInputConfig"], framework)


def parse_data_input_config(text: str, framework: str) -> dict[str, list[int]] | list[list[int]]:
    """DataInputConfig's JSON: {"name": [1, 3, 224, 224], ...}, or [[...], ...] for PyTorch."""
    field = "InputConfig.DataInputConfig"
    try:
        value = json.loads(text)
    except ValueError:
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
    return value


def parse_compiler_options(text: str) -> dict[str, Any]:
    """CompilerOptions' JSON object, with only the keys this device's compiler honours."""
    try:
        return compiler_options.parse(text)
    except compiler_options.OptionsError as exc:
        raise ValidationException(str(exc)) from None


def _check_output_config(config: dict[str, Any]) -> None:
    has_device = config.get("TargetDevice") is not None
    has_platform = config.get("TargetPlatform") is not None
    if has_device == has_platform:
        which = "both" if has_device else "neither"
        raise ValidationException(
            f"OutputConfig must have either a TargetDevice or a TargetPlatform (exactly one); it has {which}."
        )
    if config.get("CompilerOptions") is not None:
        parse_compiler_options(config["CompilerOptions"])
