"""Whether a request's target is this device, and what happens when it is not.

    matches(requested, detection) -> bool
    check_target(output_config, detection, allow_cross=False) -> Resolution
    api_target_check(detection=None, allow_cross=False) -> the API's target hook

The agent compiles for the device it runs on: its code is verified against onnxruntime and
benchmarked here, which means nothing for another device. So a request for a target this
device is not is refused with what the device is and what it does compile for. Cross-compiling
is opt-in (a setting of the agent's): then the artifact is built for the requested profile
from the profile's own values, and Resolution.native is False, which tells the pipeline that
nothing could be verified or measured.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from agent.device.catalog import Catalog, load_catalog
from agent.device.profile import Profile, TargetError
from agent.device.detect import Detection, detect
from agent.errors import ValidationException

CROSS_OFF = ("cross-compiling for another device is not enabled on this agent "
             "(its setting cross_compile, NEO_AGENT_CROSS_COMPILE)")
# The TVM wheel the agent runs does generate CUDA kernels (as CUDA C source), but its runtime
# has no CUDA support: no GPU device API and no loader for PTX or cubin. So the agent could
# neither run the kernels to verify and benchmark them, nor, without nvcc, turn them into
# machine code for the board's GPU; and its schedules are CPU schedules (a GPU kernel needs its
# loops bound to threads). A GPU target is refused, with the CPU platform that does work there.
GPU_ABSENT = ("GPU code is not built by this agent yet: its TVM generates CUDA source, but has no CUDA runtime "
              "to load the kernels onto a GPU and verify and benchmark them (and making the GPU's machine code "
              "needs nvcc); TargetPlatform {{Os: LINUX, Arch: {arch}}} compiles for the board's CPU")


class NotThisDevice(TargetError):
    """The request names a real target, but not this device, and cross-compiling is off."""


@dataclasses.dataclass(frozen=True)
class Resolution:
    """A request's target, accepted: the profile, its checked CompilerOptions, and native or not."""

    profile: Profile
    options: dict[str, Any]
    native: bool
    detection: Detection

    def tvm_config(self) -> dict[str, Any]:
        return self.profile.tvm_config(self.options, self.detection if self.native else None)

    def tvm_target(self):
        return self.profile.tvm_target(self.options, self.detection if self.native else None)


def matches(requested: Profile, detection: Detection) -> bool:
    """True when code built for `requested` runs on this device (its board, or a platform it fits)."""
    return any(profile.name == requested.name for profile in detection.accepts)


def explain(requested: Profile, detection: Detection) -> str:
    """Why `requested` is or is not this device, starting with what this device is."""
    if matches(requested, detection):
        return f"{detection.sentence}; {requested.label} is this device."
    choices = f"it compiles for {detection.choices()}" if detection.accepts else "the agent compiles for nothing here"
    return f"{detection.sentence}; {requested.label} ({requested.title}) is not this device: {choices}."


def check_target(output_config: Mapping[str, Any], detection: Detection, *, allow_cross: bool = False,
                 catalog: Catalog | None = None, cross_off: str = CROSS_OFF, gpu: bool = False) -> Resolution:
    """The request's target and CompilerOptions, accepted for this device, or TargetError saying why not.

    `gpu`: whether GPU (CUDA) targets may be built; the agent cannot yet (GPU_ABSENT), so it
    leaves this off. The profiles still describe GPU targets fully, and tests check them with it on.
    """
    profile = (catalog or load_catalog()).profile_for(output_config)
    if profile.target["kind"] == "cuda" and not gpu:
        arch = {"aarch64": "ARM64", "armv7l": "ARM_EABIHF", "x86_64": "X86_64"}.get(profile.arch, profile.arch)
        raise TargetError(f"{profile.label} ({profile.title}) needs GPU code: {GPU_ABSENT.format(arch=arch)}.")
    native = matches(profile, detection)
    if not native and not allow_cross:
        raise NotThisDevice(f"{explain(profile, detection)[:-1]}; {cross_off}.")
    options = profile.parse_options(output_config.get("CompilerOptions"))
    gpu = detection.board.gpu_arch if native and detection.board is not None else None
    if gpu and "gpu-code" in options and options["gpu-code"] != gpu:
        raise TargetError(f"{detection.sentence}; its GPU is {gpu}, so CompilerOptions gpu-code "
                          f"{options['gpu-code']!r} does not fit it.")
    return Resolution(profile, options, native, detection)


def api_target_check(detection: Detection | None = None, *, allow_cross: bool = False,
                     catalog: Catalog | None = None, gpu: bool = False) -> Callable[[Mapping[str, Any]], None]:
    """The `target_check` hook of agent.api.validation.validate_create: TargetError as ValidationException.

    This device is detected once, at the first request, unless a detection is given.
    """
    found: list[Detection] = [detection] if detection is not None else []

    def check(output_config: Mapping[str, Any]) -> None:
        if not found:
            found.append(detect(catalog=catalog))
        try:
            check_target(output_config, found[0], allow_cross=allow_cross, catalog=catalog, gpu=gpu)
        except TargetError as exc:
            raise ValidationException(str(exc)) from None

    return check
