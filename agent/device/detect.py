"""Which profile this device is, and the evidence for it.

    detect(root=Path("/")) -> Detection

reads what Linux says about the hardware: /proc/device-tree/{model,compatible} (NUL-terminated
strings; /sys/firmware/devicetree/base is the same tree), /proc/cpuinfo (each core's
implementer and part, x86 vendor and flags), /etc/nv_tegra_release (L4T, i.e. a Jetson with its
CUDA driver), /sys/class/dmi/id (cloud instance types), and which dynamic loader the userland
has. `root` lets tests point it at a captured tree.

A board (a device or server profile) is what the hardware is; the profile the agent compiles
for natively is that board when the board's code runs in this userland, else the platform
profile of the userland: a Raspberry Pi 3 on a 64-bit OS is still a rasp3b, but Neo's rasp3b
code is 32-bit ARM, which a 64-bit Python cannot load, so it compiles for LINUX/ARM64.

The userland, not the kernel, decides: on the live system it is this Python's own architecture
(a 32-bit Raspberry Pi OS runs a 64-bit kernel); in a captured tree it is the loader
(lib/ld-linux-*.so*), else the kernel's architecture from cpuinfo.
"""
from __future__ import annotations

import dataclasses
import platform as platform_module
import struct
from pathlib import Path
from typing import Any

from agent.device.catalog import Catalog, load_catalog
from agent.device.profile import Profile, Rule

# "implementer:part" as /proc/cpuinfo writes them, for evidence a person can read.
CPU_NAMES = {
    "0x41:0xc07": "Cortex-A7", "0x41:0xc0e": "Cortex-A17", "0x41:0xc0f": "Cortex-A15",
    "0x41:0xd03": "Cortex-A53", "0x41:0xd05": "Cortex-A55", "0x41:0xd07": "Cortex-A57",
    "0x41:0xd08": "Cortex-A72", "0x41:0xd0b": "Cortex-A76", "0x41:0xd0c": "Neoverse-N1",
    "0x41:0xd40": "Neoverse-V1", "0x41:0xd42": "Cortex-A78AE", "0x41:0xd4f": "Neoverse-V2",
    "0x4e:0x003": "Denver2", "0x4e:0x004": "Carmel",
}
LOADERS = (("lib/ld-linux-aarch64.so.1", "aarch64"), ("lib64/ld-linux-x86-64.so.2", "x86_64"),
           ("lib/ld-linux-armhf.so.3", "armv7l"), ("lib/ld-linux-riscv64-lp64d.so.1", "riscv64"))
MACHINE_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8l": "armv7l", "armv7": "armv7l"}
DEVICE_TREE = ("proc/device-tree", "sys/firmware/devicetree/base")
TEGRA_RELEASE = "etc/nv_tegra_release"
DMI = "sys/class/dmi/id"
KIND_RANK = {"device": 3, "server": 2, "platform": 1}
# x86-64 micro-architecture levels by cpuinfo flag: the CPU an x86 tree names when LLVM cannot be asked.
X86_LEVELS = (
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
    ("x86-64-v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
    ("x86-64-v2", {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}),
)


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the files say, before any profile is tried."""

    root: Path
    live: bool                      # the system this process runs on, not a captured tree
    machine: str | None             # the userland's architecture, normalised (catalog.MACHINES)
    machine_source: str
    model: str | None               # device-tree model
    compatible: tuple[str, ...]     # device-tree compatible, most specific first
    cpus: tuple[str, ...]           # "implementer:part" per core (ARM)
    cpuinfo: dict[str, str]         # first value of each cpuinfo field
    cores: int
    tegra_release: str | None
    dmi_vendor: str | None
    dmi_product: str | None

    @property
    def cpu_summary(self) -> str:
        counts: dict[str, int] = {}
        for cpu in self.cpus:
            counts[CPU_NAMES.get(cpu, cpu)] = counts.get(CPU_NAMES.get(cpu, cpu), 0) + 1
        if counts:
            return ", ".join(f"{n}x {name}" for name, n in counts.items())
        return self.cpuinfo.get("model name", "")

    @property
    def x86_level(self) -> str | None:
        """The x86-64 level the flags show (the mcpu of a captured x86 tree), or None if not x86."""
        if "flags" not in self.cpuinfo:
            return None
        flags = set(self.cpuinfo["flags"].split())
        return next((name for name, need in X86_LEVELS if need <= flags), "x86-64")


@dataclasses.dataclass(frozen=True)
class Detection:
    """What this device is (board), what the agent compiles for here (profile), and why."""

    profile: Profile | None
    board: Profile | None
    accepts: tuple[Profile, ...]    # every profile whose code runs here: profile first, then platforms
    evidence: tuple[str, ...]
    notes: tuple[str, ...]
    facts: Facts

    @property
    def machine(self) -> str | None:
        return self.facts.machine

    @property
    def live(self) -> bool:
        return self.facts.live

    @property
    def cores(self) -> int:
        return self.facts.cores

    @property
    def sentence(self) -> str:
        """What this device is, in one sentence, for error messages and `neo-agent detect`."""
        facts = self.facts
        name = facts.model or facts.dmi_product or facts.cpuinfo.get("model name") or facts.machine or "unknown"
        cpus = f" ({facts.cpu_summary})" if facts.cpus else ""
        what = f"{name}, {facts.cores} cores{cpus}, running {facts.machine} code"
        if self.board is not None:
            return f"This device is {self.board.title}: {what}"
        if self.profile is not None:
            return f"This device is an {facts.machine} Linux machine that no device profile names: {what}"
        return f"This device is {facts.machine or 'of an unknown architecture'}, which no device profile matches"

    def accepted_requests(self) -> list[str]:
        return [request for profile in self.accepts for request in profile.requests]

    def choices(self) -> str:
        """The accepted requests as a phrase: "TargetDevice ml_c4, ml_c5 or TargetPlatform {...}"."""
        devices = [name for p in self.accepts if p.platform is None for name in p.target_devices]
        platforms = [p.label.removeprefix("TargetPlatform ") for p in self.accepts if p.platform is not None]
        parts = (["TargetDevice " + ", ".join(devices)] if devices else []) + (
            ["TargetPlatform " + " or ".join(platforms)] if platforms else [])
        return " or ".join(parts) or "nothing"

    def to_dict(self) -> dict[str, Any]:
        """The JSON `neo-agent detect --json` prints."""
        return {
            "profile": self.profile.name if self.profile else None,
            "board": self.board.name if self.board else None,
            "machine": self.machine,
            "sentence": self.sentence,
            "accepts": self.accepted_requests(),
            "evidence": list(self.evidence),
            "notes": list(self.notes),
            "cores": self.cores,
            "root": str(self.facts.root),
        }


def detect(root: Path | str = Path("/"), machine: str | None = None, catalog: Catalog | None = None) -> Detection:
    """The profile of the device whose files are under `root` (see module doc)."""
    catalog = catalog or load_catalog()
    facts = read_facts(Path(root), machine)
    found: list[tuple[tuple[int, int, str], Profile, list[str]]] = []
    notes: list[str] = []
    for profile in catalog.profiles.values():
        identified = [line for rule in profile.identify if (line := check_rule(rule, facts))]
        if not identified:
            continue
        confirmed = [(rule, check_rule(rule, facts)) for rule in profile.confirm]
        failed = [str(rule) for rule, line in confirmed if not line]
        if failed:
            if profile.kind != "platform":
                notes.append(f"{profile.title} ({profile.name}) identified, but not confirmed: {'; '.join(failed)}")
            continue
        lines = identified + [line for _, line in confirmed if line]
        found.append(((KIND_RANK[profile.kind], len(profile.confirm), profile.name), profile, lines))
    found.sort(key=lambda item: (-item[0][0], -item[0][1], item[0][2]))
    boards = [item for item in found if item[1].kind != "platform"]
    platforms = [item for item in found if item[1].kind == "platform" and item[1].arch == facts.machine]
    board = boards[0][1] if boards else None
    if len(boards) > 1:
        notes.append("also matches " + ", ".join(item[1].name for item in boards[1:]))
    accepts = [board] if board is not None and board.arch == facts.machine else []
    accepts += [item[1] for item in platforms]
    if board is not None and board.arch != facts.machine:
        fallback = platforms[0][1].label if platforms else "nothing"
        notes.append(f"{board.title} code is {board.arch}, but this userland is {facts.machine}: "
                     f"it compiles for {fallback} here")
    native = boards[0] if board is not None and board in accepts else (platforms[0] if platforms else None)
    evidence = [_machine_line(facts)] + (boards[0][2] if boards else [])
    if native is not None and native[1] is not board:
        evidence += native[2]
    return Detection(accepts[0] if accepts else None, board, tuple(accepts), tuple(dict.fromkeys(evidence)),
                     tuple(notes), facts)


def check_rule(rule: Rule, facts: Facts) -> str | None:
    """The evidence line if `rule` holds for `facts`, else None."""
    if rule.kind == "compatible":
        return f'/proc/device-tree/compatible has "{rule.value}"' if rule.value in facts.compatible else None
    if rule.kind == "model":
        if facts.model and str(rule.value).lower() in facts.model.lower():
            return f'/proc/device-tree/model is "{facts.model}"'
        return None
    if rule.kind == "cpu":
        if facts.cpus and set(facts.cpus) <= set(rule.value):
            return f"/proc/cpuinfo: {len(facts.cpus)} cores, {facts.cpu_summary} (CPU {', '.join(sorted(set(facts.cpus)))})"
        return None
    if rule.kind == "machine":
        return _machine_line(facts) if facts.machine == rule.value else None
    if rule.kind == "file":
        path = facts.root / str(rule.value)
        if not path.is_file():
            return None
        first = _read_text(path).strip().splitlines()
        return f"/{rule.value}: {first[0].strip() if first else '(empty)'}"
    raise ValueError(f"unknown rule kind {rule.kind}")  # pragma: no cover - the catalog checks kinds


def _machine_line(facts: Facts) -> str:
    line = f"machine {facts.machine} ({facts.machine_source})"
    if facts.dmi_product:
        line += f"; DMI: {facts.dmi_vendor or '?'} {facts.dmi_product}"
    if facts.cpuinfo.get("model name") and not facts.cpus:
        line += f"; CPU: {facts.cpuinfo['model name']}"
    return line


# --- reading the files -----------------------------------------------------------------------
def read_facts(root: Path, machine: str | None = None) -> Facts:
    """Everything detection looks at, from the tree under `root` (see module doc)."""
    live = root.resolve() == Path("/")
    blocks = _cpuinfo_blocks(_read_text(root / "proc/cpuinfo"))
    fields: dict[str, str] = {}
    for block in blocks:
        for key, value in block.items():
            fields.setdefault(key, value)
    cpus = tuple(f"{b['cpu implementer'].lower()}:{b['cpu part'].lower()}"
                 for b in blocks if "cpu implementer" in b and "cpu part" in b)
    if machine is not None:
        machine, source = MACHINE_ALIASES.get(machine, machine), "given"
    elif live:
        machine, source = _process_machine(), "this Python's architecture"
    else:
        machine, source = _tree_machine(root, fields)
    model = _device_tree(root, "model")
    compatible = tuple(part for part in (_device_tree(root, "compatible", strip=False) or "").split("\x00") if part)
    return Facts(
        root=root, live=live, machine=machine, machine_source=source, model=model, compatible=compatible,
        cpus=cpus, cpuinfo=fields, cores=_cores(live, blocks), tegra_release=_first_line(root / TEGRA_RELEASE),
        dmi_vendor=_first_line(root / DMI / "sys_vendor"), dmi_product=_first_line(root / DMI / "product_name"),
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


def _first_line(path: Path) -> str | None:
    lines = _read_text(path).strip().splitlines()
    return lines[0].strip() if lines else None


def _device_tree(root: Path, name: str, strip: bool = True) -> str | None:
    for base in DEVICE_TREE:
        text = _read_text(root / base / name)
        if text:
            return text.strip("\x00\n ") if strip else text
    return None


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks, current = [], {}
    for line in text.splitlines() + [""]:
        key, sep, value = line.partition(":")
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
        elif sep:
            current.setdefault(key.strip().lower(), value.strip())
    return blocks


def _process_machine() -> str:
    """This Python's architecture: a 32-bit userland on a 64-bit kernel reports the kernel's."""
    machine = platform_module.machine().lower()
    machine = MACHINE_ALIASES.get(machine, machine)
    if struct.calcsize("P") == 4 and machine == "aarch64":
        return "armv7l"
    return machine


def _tree_machine(root: Path, fields: dict[str, str]) -> tuple[str | None, str]:
    kernel = _kernel_machine(fields)
    loaders = {arch: rel for rel, arch in LOADERS if (root / rel).exists()}
    if kernel in loaders and len(loaders) > 1:  # multiarch: the kernel's own is the native one
        return kernel, f"the loader /{loaders[kernel]}, the kernel's architecture"
    if loaders:
        arch, rel = next(iter(loaders.items()))
        return arch, f"the loader /{rel}"
    if kernel:
        return kernel, "the kernel's, from /proc/cpuinfo"
    return None, "unknown: no loader and no /proc/cpuinfo"


def _kernel_machine(fields: dict[str, str]) -> str | None:
    features = set(fields.get("features", "").split())
    if "flags" in fields:
        return "x86_64" if "lm" in fields["flags"].split() else "i686"
    if "asimd" in features or ("fp" in features and "vfp" not in features):
        return "aarch64"
    if features & {"vfp", "neon", "thumb", "half"}:
        return "armv7l"
    if fields.get("isa", "").startswith("rv64"):
        return "riscv64"
    return None


def _cores(live: bool, blocks: list[dict[str, str]]) -> int:
    """Physical cores: hyperthreads share vector units, so they are not counted."""
    if live:
        from agent.compile.target import physical_cores

        return physical_cores()
    processors = [b for b in blocks if "processor" in b and b["processor"].isdigit()]
    per_package = {b.get("physical id"): b.get("cpu cores") for b in processors}
    if processors and all(v and v.isdigit() for v in per_package.values()):
        return sum(int(v) for v in per_package.values())
    return max(1, len(processors))
