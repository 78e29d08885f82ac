"""The Greengrass component's configuration, read as the agent's own.

greengrass/recipe.yaml's DefaultConfiguration has the shape of the agent's configuration file
(agent.toml: [agent], [http], [bench], [verify], [tuning], [iotcore]), section by section and
key by key, plus Greengrass's own `accessControl`. Three things differ, all Greengrass's doing:

  - values are strings: the recipe guide advises it, because a number can come back from a
    deployment as a float (100 becomes 100.0). Each is read as its key's type here, as the
    agent reads the key's NEO_AGENT_* variable;
  - an empty string means "the agent's default" (75 % of memory, every core, ...), except for
    http.endpoint, where it turns the endpoint off, as it does in the file;
  - only the keys in `configurable_keys()` reach the agent. The rest (NOT_CONFIGURABLE) are
    Greengrass's business under a nucleus: the connection to AWS IoT Core, S3 credentials, the
    state folder; or they are secrets, which a deployment's configuration would show to anyone
    who can read the deployment. A deployment that names one is refused, naming the key:
    accepting it would change nothing, since the Run step never passes it on.

The Run step hands every configurable value to the agent as its NEO_AGENT_* variable
(`variable`), and drops the empty ones (`EMPTY_IS_A_VALUE` keeps its own), so what `neo-agent
run` loads is what `check` validated. `check` is the deployment-time validation the Greengrass
transport answers the nucleus with: AgentConfig.from_mapping's own checks, every error naming
section.key. tests/test_greengrass_recipe.py holds the recipe to `configurable_keys()`.
"""
from __future__ import annotations

from typing import Any, Mapping

from agent.config import DEFAULT_HTTP, AgentConfig
from agent.configfile import Key, schema
from agent.errors import ConfigError

GREENGRASS_KEYS = frozenset({"accessControl"})  # the nucleus's, not the agent's
EMPTY_IS_A_VALUE = frozenset({"http.endpoint"})  # "" turns the HTTP endpoint off; elsewhere "" is the default
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")

# The connection's own keys: under a nucleus the agent uses the nucleus's connection (IPC).
IOTCORE_CONNECTION = ("endpoint", "port", "thing_name", "cert", "key", "ca", "keep_alive_s", "session_expiry_s",
                      "min_reconnect_s", "max_reconnect_s", "connect_timeout_s")
# What a deployment may not set, and why: a section (every key of it) or one section.key. A key
# of the agent's schema not named here is configurable, and must be in the recipe (its test).
NOT_CONFIGURABLE = {
    "agent.state_dir": "the Run step keeps the agent's state in the component's work folder ({work:path}/state)",
    "http.credentials": "it holds secrets, and a deployment's configuration is readable by anyone who can read "
                        "the deployment; keep http.endpoint on a loopback address, where no signature is needed",
    **{f"http.{name}": "under Greengrass the endpoint serves components on this device: keep http.endpoint on a "
                       "loopback address, where traffic never leaves the device and no certificate is needed"
       for name in ("tls_cert", "tls_key")},
    **{f"iotcore.{name}": "under Greengrass the agent uses the nucleus's connection to AWS IoT Core; only "
                          "iotcore.jobs, iotcore.jobs_progress_interval_s and iotcore.jobs_step_margin_min apply"
       for name in IOTCORE_CONNECTION},
    "mqtt": "under Greengrass the agent serves its MQTT API through the nucleus (IPC), not a broker of its own",
    "s3": "under Greengrass S3 credentials come from the Token Exchange Service (the component's dependency): "
          "give its role the jobs' S3 and KMS permissions",
}


def not_configurable(section: str, name: str) -> str | None:
    """Why a deployment may not set section.name; None when it may."""
    return NOT_CONFIGURABLE.get(f"{section}.{name}") or NOT_CONFIGURABLE.get(section)


def configurable_keys() -> frozenset[str]:
    """The dotted keys a deployment may set: exactly those the recipe's Run step passes on."""
    return frozenset(key.dotted for table in schema().values() for key in table.values()
                     if not_configurable(key.section, key.name) is None)


def variable(section: str, name: str) -> str:
    """The NEO_AGENT_* variable the Run step sets from `{configuration:/section/name}`."""
    return schema()[section][name].env


def agent_mapping(configuration: Mapping[str, Any], source: str = "component configuration") -> dict[str, Any]:
    """The component's configuration as a file-shaped mapping with typed values.

    Keys the agent does not know are passed on untouched, for from_mapping to refuse by name;
    a key it knows but the Run step does not pass on is refused here (NOT_CONFIGURABLE).
    """
    sections = schema()
    mapping: dict[str, Any] = {}
    for section, table in configuration.items():
        if section in GREENGRASS_KEYS:
            continue
        if not isinstance(table, Mapping) or section not in sections:
            mapping[section] = table
            continue
        typed: dict[str, Any] = {}
        for name, value in table.items():
            key = sections[section].get(name)
            if key is None:
                typed[name] = value
                continue
            reason = not_configurable(section, name)
            if reason is not None:
                raise ConfigError(f"{source}:{key.dotted}: not configurable through the Greengrass component; {reason}")
            if value == "" and key.dotted not in EMPTY_IS_A_VALUE:
                continue
            typed[name] = _typed(key, value, f"{source}:{key.dotted}")
        mapping[section] = typed
    return mapping


def check(configuration: Mapping[str, Any], source: str = "component configuration") -> AgentConfig:
    """The configuration the agent would run with; ConfigError (naming section.key) if it cannot."""
    if not isinstance(configuration, Mapping):
        raise ConfigError(f"{source}: expected a map of sections, got {type(configuration).__name__}")
    config = AgentConfig.from_mapping(agent_mapping(configuration, source), source=source)
    if config.http:
        _check_endpoint(config.http, f"{source}:http.endpoint")
    return config


def _check_endpoint(address: str, where: str) -> None:
    """The HTTP endpoint must be one the agent can serve without http.credentials, which no deployment sets.

    The HTTP transport checks this only when the agent starts; a deployment that passed here
    would leave a component that exits at every start.
    """
    from agent.transports.http import is_loopback, parse_address

    try:
        host, _ = parse_address(address)
    except ConfigError:
        raise ConfigError(f"{where}: expected HOST:PORT such as {DEFAULT_HTTP}, got {address!r}") from None
    if not is_loopback(host):
        raise ConfigError(f"{where}: {address} is not a loopback address, and serving on one needs SigV4 keys "
                          f"(http.credentials), which are not configurable through the Greengrass component; "
                          f"bind to 127.0.0.1, or give \"\" to turn the endpoint off")


def _typed(key: Key, value: Any, where: str) -> Any:
    """A Greengrass value as the key's type, read as the agent reads the key's NEO_AGENT_* variable.

    A number (not a string) is refused for an integer key: it may reach the Run step as "100.0",
    which the agent cannot read as an integer.
    """
    kind = key.kind
    if kind == "int" and isinstance(value, float):
        raise ConfigError(f"{where}: give integers as strings (\"{value:g}\"): Greengrass may pass the number "
                          f"{value!r} on as \"{value!r}\", which is not an integer")
    if not isinstance(value, str):
        return value  # from_mapping's check says what it should have been
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if value.strip().lower() in TRUE + FALSE:
                return value.strip().lower() in TRUE
            raise ValueError(value)
        if kind == "list":
            return [part.strip() for part in value.split(",") if part.strip()]
    except ValueError:
        expected = {"int": "an integer", "float": "a number", "bool": "true or false"}[kind]
        shown = "(a secret)" if key.secret else repr(value)
        raise ConfigError(f"{where}: expected {expected} (as a string), got {shown}") from None
    return value  # str and path keys as they are; a table is a map in the configuration, not a string
