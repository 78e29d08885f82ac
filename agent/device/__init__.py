"""Device profiles: what this device is, what Neo targets mean, and which of them it compiles for.

The data is in device_profiles/*.toml (one file per profile, plus refused.toml); this package
reads it, recognises the device the agent runs on, and turns a request's TargetDevice or
TargetPlatform and CompilerOptions into a TVM target.

    load_catalog() / load_profiles()     every profile, checked (ConfigError names file and key)
    profile_for(output_config)           the profile a request names; RefusedTarget with the reason
    detect(root=Path("/"))               Detection: profile, board, evidence, the sentence
    matches(requested, detection)        whether code for `requested` runs on this device
    check_target(output_config, detection, allow_cross=False) -> Resolution
    api_target_check(...)                the same as agent.api.validation's target hook
    Profile.parse_options / tvm_config / tvm_target

Errors: TargetError (a ValueError; the message is the user's) with RefusedTarget, OptionError
and NotThisDevice under it. The API answers them with ValidationException, the compile child
with ClientError("InputConfiguration", ...). Nothing here imports TVM at import time.
"""
from agent.device.catalog import Catalog, load_catalog, load_profiles, profile_for
from agent.device.profile import OptionError, OptionSpec, Profile, RefusedTarget, Rule, TargetError
from agent.device.detect import Detection, Facts, detect
from agent.device.match import NotThisDevice, Resolution, api_target_check, check_target, explain, matches

__all__ = [
    "Catalog", "Detection", "Facts", "NotThisDevice", "OptionError", "OptionSpec", "Profile", "RefusedTarget",
    "Resolution", "Rule", "TargetError", "api_target_check", "check_target", "detect", "explain",
    "load_catalog", "load_profiles", "matches", "profile_for",
]
