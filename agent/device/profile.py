"""A device profile as the agent holds it, and the errors a request's target can raise.

The data is device_profiles/*.toml (agent.device.schema reads and checks it); a Profile is one
file: the Neo names that mean it, its TVM target, the CompilerOptions it accepts and the rules
that recognise it. Three kinds:

    device    one board or SoC (rasp4b, jetson_nano, ...)
    server    a class of hosts answering for several TargetDevice names (ml_c5, ml_m5, ...)
    platform  a TargetPlatform {Os, Arch, Accelerator} combination, and the fallback for a
              machine no device profile knows
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

HOST = "host"   # an mcpu that means the CPU the agent runs on, asked when the target is built


class TargetError(ValueError):
    """A request's target or CompilerOptions break a rule; the message is the user's.

    Neutral on purpose: the API turns it into a ValidationException, the compile child into
    ClientError("InputConfiguration", ...).
    """


class RefusedTarget(TargetError):
    """The TargetDevice or TargetPlatform is one this agent never compiles for (the reason says why)."""


class OptionError(TargetError):
    """CompilerOptions name a key the profile does not accept, or a value it does not allow."""


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One accepted CompilerOptions key and the values it may take."""

    key: str
    use: str
    allowed: tuple[str, ...] = ()
    pattern: str | None = None
    list: bool = False
    item_pattern: str | None = None
    required: bool = False
    aliases: tuple[str, ...] = ()
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One detection rule: `kind` is one of RULE_KINDS, `value` a string or, for cpu, a tuple."""

    kind: str
    value: str | tuple[str, ...]

    def __str__(self) -> str:
        value = ", ".join(self.value) if isinstance(self.value, tuple) else self.value
        return f"{self.kind} {value}"


@dataclasses.dataclass(frozen=True, eq=False)
class Profile:
    """One data file. `device` is the TargetDevice a looked-up copy answers for (profile_for sets it)."""

    name: str
    kind: str
    title: str
    description: str
    arch: str
    target_devices: tuple[str, ...]
    platform: tuple[str, str, str | None] | None
    target: Mapping[str, Any]
    cross_mcpu: str | None
    cross_device_mcpu: Mapping[str, str]
    options: Mapping[str, OptionSpec]
    identify: tuple[Rule, ...]
    confirm: tuple[Rule, ...]
    path: Path
    device: str | None = None

    @property
    def llvm(self) -> Mapping[str, Any]:
        """The LLVM (CPU) part of the target: the target itself, or a CUDA target's host."""
        return self.target["host"] if self.target["kind"] == "cuda" else self.target

    @property
    def gpu_arch(self) -> str | None:
        return self.target.get("arch") if self.target["kind"] == "cuda" else None

    @property
    def label(self) -> str:
        """How a request names this profile: "TargetDevice rasp4b", "TargetPlatform {Os: LINUX, ...}"."""
        if self.platform is not None:
            return "TargetPlatform " + platform_text(*self.platform)
        return f"TargetDevice {self.device or self.target_devices[0]}"

    @property
    def requests(self) -> list[str]:
        """Every way a request can name this profile."""
        if self.platform is not None:
            return [self.label]
        return [f"TargetDevice {name}" for name in self.target_devices]

    def canonical_option(self, key: str) -> str | None:
        """The accepted key that `key` spells (aliases like gpu_code), or None."""
        if key in self.options:
            return key
        return next((spec.key for spec in self.options.values() if key in spec.aliases), None)

    def parse_options(self, compiler_options: str | dict | None) -> dict[str, Any]:
        """CompilerOptions checked against this profile (agent.device.target.parse_options)."""
        from agent.device import target

        return target.parse_options(self, compiler_options)

    def tvm_config(self, compiler_options: str | dict | None = None, detection: Any = None) -> dict[str, Any]:
        """The JSON target TVM is given (agent.device.target.tvm_config); no TVM needed."""
        from agent.device import target

        return target.tvm_config(self, compiler_options, detection)

    def tvm_target(self, compiler_options: str | dict | None = None, detection: Any = None):
        """tvm.target.Target for this profile, CompilerOptions applied and checked with LLVM."""
        from agent.device import target

        return target.tvm_target(self, compiler_options, detection)


def platform_text(os_: str | None, arch: str | None, accelerator: str | None = None) -> str:
    parts = [f"{k}: {v}" for k, v in (("Os", os_), ("Arch", arch), ("Accelerator", accelerator)) if v]
    return "{" + ", ".join(parts) + "}"

