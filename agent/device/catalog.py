"""The catalog of device profiles: every file of device_profiles/, looked up by request.

    load_catalog(directory=None) -> Catalog      read and checked once per directory
    profile_for(output_config) -> Profile        what TargetDevice / TargetPlatform names

device_profiles/refused.toml gives, for every other TargetDevice and TargetPlatform, the
reason it is refused (RefusedTarget). Nothing here imports TVM: the API process looks
targets up with it.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from agent.device.profile import Profile, RefusedTarget, TargetError, platform_text
from agent.device.schema import read_profile, read_refused
from agent.errors import ConfigError

SOURCE_DIRECTORY = Path(__file__).resolve().parents[2] / "device_profiles"  # a checkout, an editable install
# Where a wheel puts them (pyproject.toml's data-files): an installed agent has no source tree.
INSTALLED_DIRECTORY = Path(sys.prefix) / "share" / "neo-edge-agent" / "device_profiles"
DIRECTORY_VARIABLE = "NEO_AGENT_DEVICE_PROFILES"


def default_directory() -> Path:
    """$NEO_AGENT_DEVICE_PROFILES, else the source tree's device_profiles/, else the installed copy."""
    if os.environ.get(DIRECTORY_VARIABLE):
        return Path(os.environ[DIRECTORY_VARIABLE])
    return SOURCE_DIRECTORY if SOURCE_DIRECTORY.is_dir() else INSTALLED_DIRECTORY
REFUSED_FILE = "refused.toml"


@dataclasses.dataclass(frozen=True)
class Catalog:
    """Every profile and every refusal, as loaded from one directory."""

    directory: Path
    profiles: Mapping[str, Profile]
    refused_devices: Mapping[str, str]
    refused_platforms: tuple[tuple[Mapping[str, str], str], ...]

    def by_device(self, name: str) -> Profile | None:
        for profile in self.profiles.values():
            if name in profile.target_devices:
                return dataclasses.replace(profile, device=name)
        return None

    def by_platform(self, os_: str | None, arch: str | None, accelerator: str | None) -> Profile | None:
        for profile in self.profiles.values():
            if profile.platform == (os_, arch, accelerator or None):
                return profile
        return None

    def profile_for(self, output_config: Mapping[str, Any]) -> Profile:
        """The profile OutputConfig's TargetDevice or TargetPlatform names; RefusedTarget says why not."""
        device = output_config.get("TargetDevice")
        wanted = output_config.get("TargetPlatform") or {}
        if device is not None:
            profile = self.by_device(device)
            if profile is not None:
                return profile
            reason = self.refused_devices.get(device, "it is not a TargetDevice this agent knows")
            raise RefusedTarget(f"TargetDevice {device} is not supported by this agent: {reason}.")
        if not wanted:
            raise TargetError("OutputConfig must have either a TargetDevice or a TargetPlatform.")
        key = (wanted.get("Os"), wanted.get("Arch"), wanted.get("Accelerator") or None)
        profile = self.by_platform(*key)
        if profile is not None:
            return profile
        text = platform_text(*key)
        for fields, reason in self.refused_platforms:
            if all(wanted.get(name) == value for name, value in fields.items()):
                raise RefusedTarget(f"TargetPlatform {text} is not supported by this agent: {reason}.")
        known = ", ".join(p.label for p in self.profiles.values() if p.platform)
        raise RefusedTarget(f"TargetPlatform {text} is not supported by this agent; it knows {known}.")


def load_catalog(directory: Path | str | None = None) -> Catalog:
    """Read and check every file of `directory` (default_directory() by default); cached per directory."""
    return _load_catalog(Path(directory) if directory is not None else default_directory())


@functools.lru_cache(maxsize=8)
def _load_catalog(directory: Path) -> Catalog:
    if not directory.is_dir():
        raise ConfigError(f"device profiles: {directory} is not a directory")
    profiles: dict[str, Profile] = {}
    owner: dict[str, str] = {}
    for path in sorted(directory.glob("*.toml")):
        if path.name == REFUSED_FILE:
            continue
        profile = read_profile(path)
        for name in profile.target_devices:
            if name in owner:
                raise ConfigError(f"{path}: target_devices: {name} is also in {owner[name]}.toml")
            owner[name] = profile.name
        clash = next((p for p in profiles.values() if profile.platform and p.platform == profile.platform), None)
        if clash is not None:
            raise ConfigError(f"{path}: platform: the same combination as {clash.path.name}")
        profiles[profile.name] = profile
    refused_devices, refused_platforms = read_refused(directory / REFUSED_FILE, owner)
    return Catalog(directory, profiles, refused_devices, refused_platforms)


def load_profiles(directory: Path | str | None = None) -> Mapping[str, Profile]:
    """Every profile by name."""
    return load_catalog(directory).profiles


def profile_for(output_config: Mapping[str, Any], catalog: Catalog | None = None) -> Profile:
    """Catalog.profile_for on the default catalog."""
    return (catalog or load_catalog()).profile_for(output_config)

