"""The TVM target a job builds for, and a description of the device for metrics.

The target comes from the device profiles (agent.device): the request's TargetDevice or
TargetPlatform names a profile, CompilerOptions override its defaults, and natively the
values that belong to the machine come from this device itself (mcpu "host" is the CPU as LLVM
names it; the core count is what this process may use), so code uses every vector extension
the machine has. TVM gets a JSON dict, the only form TVM 0.27 accepts:

    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3", "num-cores": 2}

The API has refused a target this device is not already (a ValidationException at
CreateCompilationJob); `resolve` checks again in the compile child, where the answer is
ClientError("InputConfiguration"), because a request recorded before a change of settings
must not build for the wrong device. Cross-compiling is the agent's opt-in `cross_compile`.

TVM is imported inside functions; `device_description()` needs no TVM at all.
"""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ClientError

if TYPE_CHECKING:  # pragma: no cover
    import tvm

    from agent.device import Detection, Resolution

KEYWORD = "InputConfiguration"

# platform.machine() names -> Neo's TargetPlatform.Arch, for artifact names.
MACHINE_ARCH = {"x86_64": "X86_64", "amd64": "X86_64", "aarch64": "ARM64", "arm64": "ARM64",
                "armv7l": "ARM_EABIHF", "armv8l": "ARM_EABIHF", "i686": "X86", "i386": "X86"}
# LLVM triples' first part -> the platform.machine() names that run its code.
TRIPLE_MACHINES = {"x86_64": {"x86_64", "amd64"}, "aarch64": {"aarch64", "arm64"},
                   "armv7l": {"armv7l", "armv8l"}, "armv7": {"armv7l", "armv8l"}}


@functools.lru_cache(maxsize=1)
def this_device() -> "Detection":
    """This device, detected once per process (the files it reads do not change while it runs)."""
    from agent.device import detect

    return detect()


def resolve(output_config: dict[str, Any], *, allow_cross: bool = False) -> "Resolution":
    """The request's target on this device, or ClientError(InputConfiguration) saying why not."""
    from agent.device import TargetError, check_target

    try:
        return check_target(output_config, this_device(), allow_cross=allow_cross)
    except TargetError as exc:
        raise ClientError(KEYWORD, str(exc)) from None


def tvm_target(resolution: "Resolution") -> tuple["tvm.target.Target", dict[str, Any]]:
    """(Target, its JSON description) for a resolved request; LLVM checks CPU and feature names."""
    from agent.device import TargetError

    try:
        return resolution.tvm_target(), resolution.tvm_config()
    except TargetError as exc:
        raise ClientError(KEYWORD, str(exc)) from None


def host_target(compiler_options: str | dict | None = None) -> tuple["tvm.target.Target", dict[str, Any]]:
    """This device's own target (its detected profile), with CompilerOptions applied."""
    from agent.device import Resolution, TargetError

    detection = this_device()
    if detection.profile is None:
        raise ClientError(KEYWORD, f"{detection.sentence}; no device profile fits it, so the agent "
                                   "cannot compile here")
    try:
        options = detection.profile.parse_options(compiler_options)
    except TargetError as exc:
        raise ClientError(KEYWORD, str(exc)) from None
    return tvm_target(Resolution(detection.profile, options, True, detection))


def runs_here(tvm_config: dict[str, Any]) -> bool:
    """Whether code for this target runs on this machine (else it ships as objects to link there)."""
    if tvm_config.get("kind") != "llvm" and "host" not in tvm_config:
        return False
    triple = str(tvm_config.get("mtriple") or (tvm_config.get("host") or {}).get("mtriple") or "")
    return platform.machine().lower() in TRIPLE_MACHINES.get(triple.split("-")[0], set())


def physical_cores() -> int:
    """Physical cores this process may use: hyperthreads share vector units, so count cores."""
    allowed = len(os.sched_getaffinity(0))
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or allowed
    except ImportError:  # pragma: no cover - psutil is a dependency
        physical = allowed
    return max(1, min(physical, allowed))


def device_description() -> dict[str, Any]:
    """What this device is, for metrics.json: a latency means little without the machine."""
    return {
        "cpu": cpu_model_name(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count() or 1,
        "physical_cores": physical_cores(),
        "memory_mb": int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def cpu_model_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's marketing name; ARM boards put it under other keys, or only in the device tree."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "hardware", "model", "cpu model", "processor"):
        if key in fields and not fields[key].isdigit():
            return fields[key]
    try:
        return Path("/sys/firmware/devicetree/base/model").read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return platform.processor() or platform.machine()
