"""Reading device_profiles/*.toml and checking every key, so a wrong file stops the agent at start.

Each file is checked against the schema below (device_profiles/README.md describes it); any
unknown key, wrong type, bad pattern or inconsistency raises ConfigError naming the file and
the key, e.g. `device_profiles/rasp4b.toml: target.num-cores: must be an integer, not 'four'`.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Mapping

from agent.device.profile import HOST, OptionSpec, Profile, Rule
from agent.errors import ConfigError

KINDS = ("device", "server", "platform")
MACHINES = ("x86_64", "aarch64", "armv7l")          # a userland's `uname -m`, normalised
TRIPLE_PREFIXES = {"x86_64": ("x86_64",), "aarch64": ("aarch64",), "armv7l": ("armv7",)}
OPTION_USES = {
    "target": ("mcpu", "mattr", "gpu-code"),         # change the TVM target (agent.device.target)
    "build": ("dtype", "layout"),                    # read by the compile pipeline
    "recorded": None,                                # accepted as Neo does, no effect: any key
}
RULE_KINDS = ("compatible", "model", "cpu", "machine", "file")
CPU_ID = re.compile(r"^0x[0-9a-f]{2}:0x[0-9a-f]{3}$")   # "implementer:part", as /proc/cpuinfo writes them
SM_ARCH = re.compile(r"^sm_[0-9]{2,3}[a-z]?$")
LLVM_KEYS = {"kind": str, "mtriple": str, "mcpu": str, "mattr": list, "num-cores": int, "mfloat-abi": str}
CUDA_KEYS = {"kind": str, "arch": str, "max_num_threads": int, "max_threads_per_block": int,
             "thread_warp_size": int, "registers_per_block": int, "max_shared_memory_per_block": int,
             "host": dict}


class _Table:
    """A TOML table being read: each key taken once, with its type checked; leftovers are errors."""

    def __init__(self, path: Path, table: Any, where: str = ""):
        self.path, self.where = path, where
        if not isinstance(table, dict):
            self.fail("", "must be a table")
        self.table, self.seen = table, set()

    def fail(self, key: str, problem: str):
        raise ConfigError(f"{self.path}: {self.where}{key}: {problem}")

    def take(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.seen.add(key)
        if key not in self.table:
            if default is ...:
                self.fail(key, "is required")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # True is an int
            self.fail(key, f"must be {_type_name(kind)}, not {value!r}")
        return value

    def strings(self, key: str, default: Any = ...) -> tuple[str, ...]:
        value = self.take(key, list, default)
        if not all(isinstance(item, str) and item for item in value):
            self.fail(key, "must be a list of non-empty strings")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            self.fail(unknown[0], "is not a key this schema has")


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def read_profile(path: Path) -> Profile:
    top = _Table(path, read_toml(path))
    name = top.take("name", str)
    if name != path.stem:
        top.fail("name", f"must be the file's name, {path.stem!r}")
    kind = top.take("kind", str)
    if kind not in KINDS:
        top.fail("kind", f"must be one of {', '.join(KINDS)}")
    arch = top.take("arch", str)
    if arch not in MACHINES:
        top.fail("arch", f"must be one of {', '.join(MACHINES)}")
    devices = top.strings("target_devices", ())
    platform = _read_platform(top) if "platform" in top.table or kind == "platform" else None
    if (kind == "platform") != (platform is not None) or (kind != "platform") != bool(devices):
        top.fail("kind", "a platform profile has `platform` and no target_devices; the others the reverse")
    target = _read_target(path, top.take("target", dict), arch)
    cross = _Table(path, top.take("cross", dict, {}), "cross.")
    cross_mcpu = cross.take("mcpu", str, None)
    device_mcpu = cross.take("device_mcpu", dict, {})
    cross.done()
    if not all(k in devices and isinstance(v, str) for k, v in device_mcpu.items()):
        top.fail("cross.device_mcpu", "must map this profile's target_devices to LLVM CPU names")
    llvm = target["host"] if target["kind"] == "cuda" else target
    if (llvm["mcpu"] == HOST) != (cross_mcpu is not None):
        top.fail("cross.mcpu", 'is required exactly when the target\'s mcpu is "host"')
    options = _read_options(path, top.take("options", dict))
    if target["kind"] == "cuda" and "arch" not in target and not getattr(options.get("gpu-code"), "required", False):
        top.fail("target.arch", "is required unless options.gpu-code is required")
    identify, confirm = _read_detect(path, top.take("detect", dict))
    profile = Profile(
        name=name, kind=kind, title=top.take("title", str), description=top.take("description", str),
        arch=arch, target_devices=devices, platform=platform, target=target, cross_mcpu=cross_mcpu,
        cross_device_mcpu=device_mcpu, options=options, identify=identify, confirm=confirm, path=path,
    )
    top.done()
    return profile


def _read_platform(top: _Table) -> tuple[str, str, str | None]:
    table = _Table(top.path, top.take("platform", dict), "platform.")
    value = (table.take("os", str), table.take("arch", str), table.take("accelerator", str, None))
    table.done()
    return value


def _read_llvm(path: Path, raw: Any, where: str, arch: str) -> dict[str, Any]:
    table = _Table(path, raw, where)
    config = {key: table.take(key, kind, None) for key, kind in LLVM_KEYS.items()}
    config = {key: value for key, value in config.items() if value is not None}
    table.done()
    for key in ("mtriple", "mcpu", "num-cores"):
        if key not in config:
            table.fail(key, "is required")
    if config["kind"] != "llvm":
        table.fail("kind", 'must be "llvm"')
    if not config["mtriple"].startswith(TRIPLE_PREFIXES[arch]):
        table.fail("mtriple", f"must be a triple for arch {arch}")
    if config["num-cores"] < 1:
        table.fail("num-cores", "must be at least 1")
    # TVM's LLVM leaves the float ABI at LLVM's default, soft, even for a gnueabihf triple: objects
    # then pass floats in core registers (no Tag_ABI_VFP_args), which a hard-float userland's libm
    # and linker do not agree with. So a hard-float profile must say so.
    if config["mtriple"].endswith("gnueabihf") and config.get("mfloat-abi") != "hard":
        table.fail("mfloat-abi", 'must be "hard" for a gnueabihf triple')
    if config.get("mfloat-abi", "hard") not in ("soft", "softfp", "hard"):
        table.fail("mfloat-abi", "must be soft, softfp or hard")
    if "mattr" in config and not all(isinstance(m, str) and m[:1] in "+-" and len(m) > 1 for m in config["mattr"]):
        table.fail("mattr", 'must be LLVM features like "+neon"')
    return config


def _read_target(path: Path, raw: dict[str, Any], arch: str) -> dict[str, Any]:
    kind = raw.get("kind")
    if kind == "llvm":
        return _read_llvm(path, raw, "target.", arch)
    if kind != "cuda":
        raise ConfigError(f'{path}: target.kind: must be "llvm" or "cuda"')
    table = _Table(path, raw, "target.")
    config = {key: table.take(key, kind_, None) for key, kind_ in CUDA_KEYS.items()}
    config = {key: value for key, value in config.items() if value is not None}
    table.done()
    if "arch" in config and not SM_ARCH.match(config["arch"]):
        table.fail("arch", "must be a CUDA architecture like sm_53")
    if "host" not in config:
        table.fail("host", "is required for a cuda target (the CPU side)")
    config["host"] = _read_llvm(path, config["host"], "target.host.", arch)
    return config


def _read_options(path: Path, raw: dict[str, Any]) -> dict[str, OptionSpec]:
    options: dict[str, OptionSpec] = {}
    for key, value in raw.items():
        table = _Table(path, value, f"options.{key}.")
        use = table.take("use", str)
        if use not in OPTION_USES:
            table.fail("use", f"must be one of {', '.join(OPTION_USES)}")
        if OPTION_USES[use] is not None and key not in OPTION_USES[use]:
            table.fail("use", f"{use} options are {', '.join(OPTION_USES[use])}")
        spec = OptionSpec(
            key=key, use=use, allowed=table.strings("allowed", ()), pattern=table.take("pattern", str, None),
            list=table.take("list", bool, False), item_pattern=table.take("item_pattern", str, None),
            required=table.take("required", bool, False), aliases=table.strings("aliases", ()),
            note=table.take("note", str, ""),
        )
        table.done()
        for field in ("pattern", "item_pattern"):
            try:
                re.compile(getattr(spec, field) or "")
            except re.error as exc:
                table.fail(field, f"is not a regular expression: {exc}")
        if spec.item_pattern and not spec.list:
            table.fail("item_pattern", "needs list = true")
        options[key] = spec
    aliases = [alias for spec in options.values() for alias in spec.aliases]
    if len(set(aliases)) != len(aliases) or set(aliases) & set(options):
        raise ConfigError(f"{path}: options: an alias is used twice or is also a key")
    return options


def _read_detect(path: Path, raw: dict[str, Any]) -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
    table = _Table(path, raw, "detect.")
    identify = tuple(_read_rule(path, rule, f"detect.identify[{i}].")
                     for i, rule in enumerate(table.take("identify", list)))
    confirm = tuple(_read_rule(path, rule, f"detect.confirm[{i}].")
                    for i, rule in enumerate(table.take("confirm", list, [])))
    table.done()
    if not identify:
        table.fail("identify", "must have at least one rule")
    return identify, confirm


def _read_rule(path: Path, raw: Any, where: str) -> Rule:
    table = _Table(path, raw, where)
    if len(table.table) != 1 or next(iter(table.table)) not in RULE_KINDS:
        table.fail("", f"must have exactly one of {', '.join(RULE_KINDS)}")
    kind = next(iter(table.table))
    if kind == "cpu":
        value: str | tuple[str, ...] = table.strings("cpu")
        if not value or not all(CPU_ID.match(v) for v in value):
            table.fail("cpu", 'must list "implementer:part" ids like "0x41:0xd08"')
    else:
        value = table.take(kind, str)
        if kind == "machine" and value not in MACHINES:
            table.fail("machine", f"must be one of {', '.join(MACHINES)}")
    return Rule(kind, value)


def read_refused(path: Path, owner: Mapping[str, str]) -> tuple[dict[str, str], tuple]:
    top = _Table(path, read_toml(path))
    devices = top.take("devices", dict)
    for name, reason in devices.items():
        if not isinstance(reason, str) or not reason:
            top.fail(f"devices.{name}", "must be a reason (a non-empty string)")
        if name in owner:
            top.fail(f"devices.{name}", f"is hosted by {owner[name]}.toml")
    platforms = []
    for i, raw in enumerate(top.take("platforms", list, [])):
        entry = _Table(path, raw, f"platforms[{i}].")
        fields = {key: entry.take(key, str, None) for key in ("os", "arch", "accelerator")}
        reason = entry.take("reason", str)
        entry.done()
        fields = {key.capitalize(): value for key, value in fields.items() if value}  # the request's spelling
        platforms.append((fields, reason))
    top.done()
    return dict(devices), tuple(platforms)
