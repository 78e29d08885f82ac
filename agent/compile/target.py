"""The TVM target for this device, and a description of the device for metrics.

The agent compiles natively: the target is the host's own CPU, so code uses every vector
extension the machine has (the TVM notes measured 3.5x from naming mcpu alone). It is a JSON
dict, the only form TVM 0.27 accepts:

    {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": "znver3", "num-cores": 2}

`num-cores` is the physical core count (MetaSchedule refuses a target without it).
Neo's CompilerOptions may override `mcpu` and add `mattr` ({"mcpu": "skylake-avx512"},
{"mattr": ["+neon"]}; Neo's docs write them with single quotes, which are accepted too).

A TargetPlatform naming another architecture or an accelerator is refused with
ClientError("InputConfiguration"): this agent cannot cross-compile, and saying so beats
handing back an artifact that will not load there. TargetDevice names are not checked here.

TVM is imported inside functions; `device_description()` needs no TVM at all.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.compile import options as compiler_options
from agent.errors import ClientError

if TYPE_CHECKING:  # pragma: no cover
    import tvm

KEYWORD = "InputConfiguration"

# Neo's TargetPlatform.Arch values -> the platform.machine() names that run them natively.
ARCH_MACHINES = {
    "X86_64": {"x86_64", "amd64"},
    "X86": {"i386", "i486", "i586", "i686", "x86"},
    "ARM64": {"aarch64", "arm64"},
    "ARM_EABIHF": {"armv7l", "armv7", "armv8l"},
    "ARM_EABI": {"armv7l", "armv7", "armv6l", "armv8l"},
}
MACHINE_ARCH = {"x86_64": "X86_64", "amd64": "X86_64", "aarch64": "ARM64", "arm64": "ARM64",
                "armv7l": "ARM_EABIHF", "armv8l": "ARM_EABIHF", "i686": "X86", "i386": "X86"}


def physical_cores() -> int:
    """Physical cores this process may use: hyperthreads share vector units, so count cores."""
    allowed = len(os.sched_getaffinity(0))
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or allowed
    except ImportError:  # pragma: no cover - psutil is a dependency
        physical = allowed
    return max(1, min(physical, allowed))


def host_triple() -> str:
    """LLVM's triple for this host, with the wheel's build vendor ("conda") made generic."""
    from tvm.target import codegen

    parts = codegen.llvm_get_system_triple().split("-")
    if len(parts) == 4 and parts[1] not in ("unknown", "pc", "none"):
        parts[1] = "unknown"
    return "-".join(parts)


def parse_compiler_options(text: str | dict | None) -> dict[str, Any]:
    """CompilerOptions as a dict, by the same rules the API applied at CreateCompilationJob."""
    try:
        return compiler_options.parse(text)
    except compiler_options.OptionsError as exc:
        raise ClientError(KEYWORD, str(exc)) from None


def check_platform(output_config: dict[str, Any]) -> None:
    """Refuse a TargetPlatform this host cannot compile natively for (see module doc)."""
    platform_ = output_config.get("TargetPlatform") or {}
    if not platform_:
        return
    machine = platform.machine().lower()
    arch = platform_.get("Arch")
    if arch and machine not in ARCH_MACHINES.get(arch, set()):
        raise ClientError(KEYWORD, f"TargetPlatform Arch {arch} is not this device's architecture "
                                   f"({MACHINE_ARCH.get(machine, machine)}); the agent compiles natively only")
    if platform_.get("Os") and platform_["Os"] != "LINUX":
        raise ClientError(KEYWORD, f"TargetPlatform Os {platform_['Os']} is not this device's OS (LINUX)")
    if platform_.get("Accelerator"):
        raise ClientError(KEYWORD, f"TargetPlatform Accelerator {platform_['Accelerator']} is not supported; "
                                   f"the agent compiles for this device's CPU")


def host_target(compiler_options: str | dict | None = None) -> tuple["tvm.target.Target", dict[str, Any]]:
    """(Target, its JSON-able description) for this CPU, with CompilerOptions applied."""
    import tvm
    from tvm.target import codegen

    options = parse_compiler_options(compiler_options)
    triple = host_triple()
    config: dict[str, Any] = {
        "kind": "llvm",
        "mtriple": triple,
        "mcpu": codegen.llvm_get_system_cpu(),
        "num-cores": physical_cores(),
    }
    if "mcpu" in options:
        mcpu = options["mcpu"]
        if not isinstance(mcpu, str) or not codegen.llvm_is_valid_cpu(mcpu, triple):
            raise ClientError(KEYWORD, f"CompilerOptions mcpu {mcpu!r} is not a CPU LLVM knows for {triple}")
        config["mcpu"] = mcpu
    if "mattr" in options:
        mattr = options["mattr"]
        if isinstance(mattr, str):
            mattr = [m.strip() for m in mattr.split(",") if m.strip()]
        if not isinstance(mattr, list) or not all(isinstance(m, str) and m[:1] in "+-" and len(m) > 1 for m in mattr):
            raise ClientError(KEYWORD, f"CompilerOptions mattr must be a list like ['+neon'], got {options['mattr']!r}")
        config["mattr"] = mattr
    try:
        target = tvm.target.Target(config)
    except Exception as exc:
        raise ClientError(KEYWORD, f"CompilerOptions give an invalid target {json.dumps(config)}: {exc}") from exc
    return target, config


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
