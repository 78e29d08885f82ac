"""The Greengrass component's configuration, read as the agent's own.

greengrass/recipe.yaml's DefaultConfiguration has the shape of the agent's configuration file
(agent.toml: [agent], [http], [bench], [verify], [iotcore], ...), section by section and key by
key, plus Greengrass's own `accessControl`. Two things differ, both Greengrass's doing:

  - values are strings: the recipe guide advises it, because a number can come back from a
    deployment as a float (100 becomes 100.0). Each is read as its key's type here, as the
    agent reads the key's NEO_AGENT_* variable;
  - an empty string means "the agent's default" (75 % of memory, every core, ...), except for
    http.endpoint, where it turns the endpoint off, as it does in the file.

The Run step hands every value to the agent as its NEO_AGENT_* variable (`variable`), and
drops the empty ones (`EMPTY_IS_A_VALUE` keeps its own), so what `neo-agent run` loads is what
`check` validated. `check` is the deployment-time validation the Greengrass transport answers
the nucleus with: AgentConfig.from_mapping's own checks, every error naming section.key.
"""
from __future__ import annotations

from typing import Any, Mapping

from agent.config import AgentConfig
from agent.configfile import Key, schema
from agent.errors import ConfigError

GREENGRASS_KEYS = frozenset({"accessControl"})  # the nucleus's, not the agent's
EMPTY_IS_A_VALUE = frozenset({"http.endpoint"})  # "" turns the HTTP endpoint off; elsewhere "" is the default
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def variable(section: str, name: str) -> str:
    """The NEO_AGENT_* variable the Run step sets from `{configuration:/section/name}`."""
    return schema()[section][name].env


def agent_mapping(configuration: Mapping[str, Any], source: str = "component configuration") -> dict[str, Any]:
    """The component's configuration as a file-shaped mapping with typed values.

    Keys the agent does not know are passed on untouched, for from_mapping to refuse by name.
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
            elif value == "" and key.dotted not in EMPTY_IS_A_VALUE:
                continue
            else:
                typed[name] = _typed(key, value, f"{source}:{key.dotted}")
        mapping[section] = typed
    return mapping


def check(configuration: Mapping[str, Any], source: str = "component configuration") -> AgentConfig:
    """The configuration the agent would run with; ConfigError (naming section.key) if it cannot."""
    if not isinstance(configuration, Mapping):
        raise ConfigError(f"{source}: expected a map of sections, got {type(configuration).__name__}")
    return AgentConfig.from_mapping(agent_mapping(configuration, source), source=source)


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
