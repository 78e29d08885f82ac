"""A profile's TVM target, with the request's CompilerOptions checked and applied.

    parse_options(profile, compiler_options) -> dict        the accepted options, checked
    tvm_config(profile, compiler_options, detection) -> dict  the JSON target TVM is given
    tvm_target(profile, compiler_options, detection) -> tvm.target.Target

CompilerOptions override the profile's defaults: `mcpu` and `mattr` the CPU's (a CUDA target's
host), `gpu-code` the CUDA architecture. The others are read by the build (`dtype`, `layout`)
or accepted as Neo accepts them and recorded (`trt-ver`, `cuda-ver`: TVM's CUDA build uses
neither TensorRT nor a CUDA version). Options are read as JSON or as the Python-literal form
Neo's docs show ({'mattr': ['+neon']}).

Natively, with the Detection of this device, values that belong to the machine come from it:
`mcpu = "host"` is the CPU as LLVM names it (from a captured tree: the board's CPU, or the
x86-64 level its flags show), and num-cores is the cores this process may use. Without a
detection (cross-compiling) they come from the profile: its `cross` mcpu, its num-cores.

TVM accepts a CPU or feature name it does not know with only a warning, and the code is then
built for a generic CPU; tvm_target asks LLVM first so that the request fails instead. Only
tvm_target and a live "host" mcpu import TVM.
"""
from __future__ import annotations

import ast
import copy
import functools
import json
import re
from typing import TYPE_CHECKING, Any

from agent.device.profile import HOST, OptionError, OptionSpec, Profile, TargetError

if TYPE_CHECKING:  # pragma: no cover
    import tvm

    from agent.device.detect import Detection

FIELD = "OutputConfig.CompilerOptions"  # as the API names members in its errors
# The agent's own options, which every profile accepts (Neo has none like them): the job's
# on-device tuning budget (agent.compile.tuning), a whole number, 0 for no tuning. With
# neither, the agent's tuning.default_seconds applies; its tuning.max_seconds caps both.
TUNING_OPTIONS = {"tuning_seconds": 28 * 86400, "tuning_trials": 1_000_000}   # key -> largest value


def parse_options(profile: Profile, compiler_options: str | dict | None) -> dict[str, Any]:
    """The options as {accepted key: value}; OptionError names the key and what is accepted."""
    if isinstance(compiler_options, dict):
        raw: Any = compiler_options
    elif not compiler_options:
        raw = {}
    else:
        raw = _read(compiler_options)
    if not isinstance(raw, dict):
        raise OptionError(f"{FIELD} must be a JSON object; got {compiler_options!r}.")
    options: dict[str, Any] = {}
    for key, value in raw.items():
        if key in TUNING_OPTIONS:
            options[key] = _whole_number(str(key), value, TUNING_OPTIONS[key])
            continue
        canonical = profile.canonical_option(str(key))
        if canonical is None:
            raise OptionError(f"{FIELD}: {key} is not accepted for {profile.label}; "
                              f"it accepts {', '.join([*profile.options, *TUNING_OPTIONS])}.")
        if canonical in options:
            raise OptionError(f"{FIELD}: {key} and {canonical} are the same option; give it once.")
        options[canonical] = _check_value(profile, profile.options[canonical], str(key), value)
    missing = [key for key, spec in profile.options.items() if spec.required and key not in options]
    if missing:
        raise OptionError(f"{FIELD} must give {', '.join(missing)} for {profile.label}, as Neo requires.")
    return options


def _check_value(profile: Profile, spec: OptionSpec, key: str, value: Any) -> Any:
    why = f" ({spec.note})" if spec.note else ""
    if spec.list:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        if not (isinstance(items, list) and items and all(
                isinstance(v, str) and v and (not spec.item_pattern or re.fullmatch(spec.item_pattern, v))
                for v in items)):
            raise OptionError(f'{FIELD}: {key} must be a list like ["+neon"] or a string "+neon,+vfp4"; '
                              f"got {value!r}.")
        return items
    if not isinstance(value, str) or not value:
        raise OptionError(f"{FIELD}: {key} must be a non-empty string; got {value!r}.")
    if spec.allowed and value not in spec.allowed:
        raise OptionError(f"{FIELD}: {key} {value!r} is not accepted for {profile.label}{why}; "
                          f"it accepts {', '.join(spec.allowed)}.")
    if spec.pattern and not re.fullmatch(spec.pattern, value):
        raise OptionError(f"{FIELD}: {key} {value!r} is not valid for {profile.label}{why}; "
                          f"it must match {spec.pattern}.")
    return value


def _whole_number(key: str, value: Any, largest: int) -> int:
    """A tuning option: an integer, or a string of one ("600"), from 0 to `largest`."""
    number = value
    if isinstance(value, str) and re.fullmatch(r"\s*\d{1,9}\s*", value):
        number = int(value)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= largest:
        raise OptionError(f"{FIELD}: {key} must be a whole number from 0 to {largest}; got {value!r}.")
    return number


def _read(text: str) -> Any:
    for reader in (json.loads, ast.literal_eval):
        try:
            return reader(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def tvm_config(profile: Profile, compiler_options: str | dict | None = None,
               detection: "Detection | None" = None) -> dict[str, Any]:
    """The target as TVM's JSON dict (see module doc); `detection` only counts if it is this profile's."""
    options = parse_options(profile, compiler_options)
    native = detection is not None and any(p.name == profile.name for p in detection.accepts)
    config = copy.deepcopy(dict(profile.target))
    llvm = config["host"] if config["kind"] == "cuda" else config
    board = detection.board if native else None
    if llvm["mcpu"] == HOST:
        llvm["mcpu"] = _native_cpu(detection, board) if native else (
            profile.cross_device_mcpu.get(profile.device or "", profile.cross_mcpu))
    if native:
        llvm["num-cores"] = detection.cores
        if config["kind"] == "cuda" and board is not None and board.gpu_arch:
            config.setdefault("arch", board.gpu_arch)
    if "mcpu" in options:
        llvm["mcpu"] = options["mcpu"]
    if "mattr" in options:
        llvm["mattr"] = list(options["mattr"])
    if "gpu-code" in options:
        config["arch"] = options["gpu-code"]
    if config["kind"] == "cuda" and "arch" not in config:
        raise OptionError(f"{FIELD} must give gpu-code for {profile.label}: the GPU's architecture, e.g. sm_53.")
    return config


def _native_cpu(detection: "Detection", board: Profile | None) -> str:
    """This machine's CPU: LLVM's name for it live; from a captured tree the board's, or the x86 level."""
    if detection.live:
        from tvm.target import codegen

        return str(codegen.llvm_get_system_cpu())
    if board is not None and board.llvm["mcpu"] != HOST:
        return board.llvm["mcpu"]
    return detection.facts.x86_level or "generic"


def tvm_target(profile: Profile, compiler_options: str | dict | None = None,
               detection: "Detection | None" = None) -> "tvm.target.Target":
    """tvm.target.Target of tvm_config, after LLVM has vouched for the CPU and every feature."""
    import tvm
    from tvm.target import codegen

    options = parse_options(profile, compiler_options)
    config = tvm_config(profile, options, detection)
    llvm = config["host"] if config["kind"] == "cuda" else config
    triple = llvm["mtriple"]
    if not codegen.llvm_is_valid_cpu(llvm["mcpu"], triple):
        where = f"{FIELD}: mcpu" if "mcpu" in options else f"{profile.path.name}: mcpu"
        raise OptionError(f"{where} {llvm['mcpu']!r} is not a CPU LLVM knows for {triple}.")
    unknown = [m for m in llvm.get("mattr", []) if m[1:] not in llvm_features(triple)]
    if unknown:
        where = f"{FIELD}: mattr" if "mattr" in options else f"{profile.path.name}: mattr"
        raise OptionError(f"{where} {', '.join(unknown)}: not a feature LLVM knows for {triple}.")
    try:
        return tvm.target.Target(config)
    except Exception as exc:
        raise TargetError(f"{FIELD} give a target TVM refuses, {json.dumps(config)}: {exc}") from exc


@functools.lru_cache(maxsize=None)
def llvm_features(triple: str) -> frozenset[str]:
    """Every feature some CPU of `triple` has, as LLVM names them: what a mattr may add or remove."""
    import tvm
    from tvm.target import codegen

    features: set[str] = set()
    for cpu in codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mtriple": triple})):
        target = tvm.target.Target({"kind": "llvm", "mtriple": triple, "mcpu": str(cpu)})
        features.update(str(f) for f in codegen.llvm_get_cpu_features(target))
    return frozenset(features)
