"""The configuration file and the layers over it: defaults < file < environment < command line.

    [agent]                      # the top-level settings
    state_dir = "/var/lib/neo-agent"
    cross_compile = true
    [http]
    endpoint = "0.0.0.0:8573"
    [http.credentials]           # access key id = secret key
    AKIDEXAMPLE = "..."
    [mqtt]
    enabled = true
    tls_ca = "ca.pem"            # relative: to this file's directory

The file is `--config PATH`, else $NEO_AGENT_CONFIG (set but empty: no file), else
/etc/neo-agent/agent.toml when it exists (systemd's ConfigurationDirectory). Each layer
replaces single keys of the one below; a table value (http.credentials, s3.role_aliases) is
one key, replaced whole.

The schema is derived from agent.config's dataclasses, so a setting is declared once (type,
default, checks) and the file, the environment (NEO_AGENT_<SECTION>_<KEY>; [agent]'s as
NEO_AGENT_<KEY>) and `neo-agent check-config` follow it. Every value is type-checked before any
is used, and every error names its place: `FILE:section.key: expected an integer, got a string
'10'`, an unknown key or section with difflib's nearest name. A field with repr=False is a
secret: never echoed, and a file holding one must be owner-only (0600), as ssh demands of keys.
"""
from __future__ import annotations

import dataclasses
import datetime
import difflib
import functools
import json
import math
import os
import re
import stat
import tomllib
import typing
from pathlib import Path
from typing import Any, Mapping

from agent.config import AgentConfig, parse_credentials
from agent.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/neo-agent/agent.toml")  # systemd/neo-agent.service's ConfigurationDirectory
CONFIG_ENV = "NEO_AGENT_CONFIG"
ENV_PREFIX = "NEO_AGENT_"
AGENT_SECTION = "agent"  # where AgentConfig's own (non-section) fields go in the file
OVERRIDE_ONLY = frozenset({"pipeline_module"})  # a test hook, not a setting: neither file nor environment
# Top-level fields that sit in a section of their own in the file: the HTTP endpoint and its keys.
RELOCATED = {"http": ("http", "endpoint"), "http_credentials": ("http", "credentials"),
             "http_tls_cert": ("http", "tls_cert"), "http_tls_key": ("http", "tls_key")}
ENV_NAMES = {"http.endpoint": "NEO_AGENT_HTTP", "http.credentials": "NEO_AGENT_HTTP_CREDENTIALS"}
# Settings that name files: in a file, a relative one is taken from the file's directory.
PATH_KEYS = frozenset({"agent.state_dir", "iotcore.cert", "iotcore.key", "iotcore.ca", "mqtt.tls_ca",
                       "mqtt.tls_cert", "mqtt.tls_key", "s3.iot_cert", "s3.iot_key", "s3.iot_ca",
                       "http.tls_cert", "http.tls_key"})
OWNER_ONLY = 0o077  # no permission bit for group or others may be set on a file that holds a secret
EXPECTED = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
            "path": "a path (a string)", "list": "an array of strings", "table": "a table of strings"}


@dataclasses.dataclass(frozen=True)
class Key:
    """One setting: its place in the file, on AgentConfig and in the environment."""

    section: str
    name: str
    attr: tuple[str, ...]  # ("region",) or ("mqtt", "port")
    kind: str  # a key of EXPECTED
    python: Any  # the dataclass field's type (a path may be a str or a Path)
    env: str
    secret: bool

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where a value came from: the layer (file, env, cli, mapping) and the file or variable."""

    layer: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.layer} {self.where}".rstrip()


@dataclasses.dataclass
class Loaded:
    """A loaded configuration with each key's origin (a key absent from `origins` is the default)."""

    config: AgentConfig
    origins: dict[str, Origin]
    file: Path | None
    file_note: str  # which file, or why none
    notes: list[str]  # things check-config should mention: stray NEO_AGENT_* variables, say


# --- the schema -------------------------------------------------------------------------------
@functools.cache
def schema() -> dict[str, dict[str, Key]]:
    """section -> key -> Key: [agent], [http], then one section per dataclass field of AgentConfig."""
    sections: dict[str, dict[str, Key]] = {AGENT_SECTION: {}, "http": {}}
    hints = typing.get_type_hints(AgentConfig)
    for field in dataclasses.fields(AgentConfig):
        hint = hints[field.name]
        if field.name in OVERRIDE_ONLY:
            continue
        if dataclasses.is_dataclass(hint):
            sub_hints = typing.get_type_hints(hint)
            for sub in dataclasses.fields(hint):
                _add(sections, field.name, sub.name, (field.name, sub.name), sub_hints[sub.name], not sub.repr)
        else:
            section, name = RELOCATED.get(field.name, (AGENT_SECTION, field.name))
            _add(sections, section, name, (field.name,), hint, not field.repr)
    return sections


def _add(sections: dict, section: str, name: str, attr: tuple[str, ...], hint: Any, secret: bool) -> None:
    dotted = f"{section}.{name}"
    kind = "path" if dotted in PATH_KEYS else _kind(hint, dotted)
    env = ENV_NAMES.get(dotted) or (f"{ENV_PREFIX}{name.upper()}" if section == AGENT_SECTION
                                    else f"{ENV_PREFIX}{section.upper()}_{name.upper()}")
    sections.setdefault(section, {})[name] = Key(section, name, attr, kind, hint, env, secret)


def _kind(hint: Any, dotted: str) -> str:
    simple = {bool: "bool", str: "str", int: "int", float: "float", Path: "path"}
    if hint in simple:
        return simple[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and args == (str, Ellipsis):
        return "list"
    if origin is dict and args == (str, str):
        return "table"
    raise TypeError(f"{dotted}: agent.configfile has no file syntax for the type {hint!r}")


def all_keys() -> dict[str, Key]:
    """dotted name -> Key."""
    return {key.dotted: key for keys in schema().values() for key in keys.values()}


# --- loading ----------------------------------------------------------------------------------
def load_config(path: Path | None = None, *, environ: Mapping[str, str] = os.environ,
                overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Defaults < the file < NEO_AGENT_* in `environ` < `overrides` (the command line)."""
    return load_with_origins(path, environ=environ, overrides=overrides).config


def load_with_origins(path: Path | str | None = None, *, environ: Mapping[str, str] = os.environ,
                      overrides: dict[str, Any] | None = None) -> Loaded:
    """load_config, keeping where each value came from (for check-config)."""
    file, file_note = find_file(path, environ)
    settings: dict[str, tuple[Any, Origin]] = {}
    if file is not None:
        settings.update(read_file(file))
    settings.update(read_environment(environ))
    extra: dict[str, Any] = {}
    settings.update(read_overrides(overrides or {}, extra))
    config = build(settings, extra)
    return Loaded(config, {name: origin for name, (_, origin) in settings.items()}, file, file_note,
                  stray_variables(environ))


def config_from_mapping(mapping: Mapping[str, Any], *, source: str = "<mapping>") -> AgentConfig:
    """Defaults < `mapping`, a dict shaped like the file; errors name `source`:section.key."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{source}: expected a table of sections, got {_describe(mapping, False)}")
    return build(read_mapping(mapping, Origin("mapping", source), source, base=None), {})


def find_file(path: Path | str | None, environ: Mapping[str, str]) -> tuple[Path | None, str]:
    """The configuration file to read (None: none), and a line saying which and why."""
    if path is None:
        named = environ.get(CONFIG_ENV)
        if named is not None:
            return (Path(named), f"{named} (${CONFIG_ENV})") if named else (None, f"none (${CONFIG_ENV} is empty)")
    elif str(path):
        return Path(path), f"{path} (--config)"
    else:
        return None, "none (--config is empty)"
    try:
        os.stat(DEFAULT_CONFIG_PATH)
    except (FileNotFoundError, NotADirectoryError):
        return None, f"none ({DEFAULT_CONFIG_PATH} does not exist)"
    except PermissionError:  # /etc/neo-agent is 0700 neo-agent: another user sees no file
        readable = False
    else:
        readable = os.access(DEFAULT_CONFIG_PATH, os.R_OK)
    if not readable:  # the agent's file, not this user's: a client command carries on without it
        return None, (f"none ({DEFAULT_CONFIG_PATH} is not readable by this user; "
                      "run as the agent's user or root, or name a file with --config)")
    return DEFAULT_CONFIG_PATH, f"{DEFAULT_CONFIG_PATH} (the default)"


def read_file(path: Path) -> dict[str, tuple[Any, Origin]]:
    """The file's settings, type-checked, relative paths resolved; secrets only in an owner-only file."""
    try:
        with open(path, "rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    settings = read_mapping(data, Origin("file", str(path)), str(path), base=path.absolute().parent)
    keys = all_keys()
    secrets = [name for name, (value, _) in settings.items() if keys[name].secret and value]
    if secrets and mode & OWNER_ONLY:
        raise ConfigError(f"{path}: holds secrets ({', '.join(secrets)}) but is mode {mode:04o}, open to group "
                          f"or others; make it owner-only: chmod 600 {path}")
    return settings


def read_mapping(mapping: Mapping[str, Any], origin: Origin, prefix: str,
                 base: Path | None) -> dict[str, tuple[Any, Origin]]:
    """A file-shaped mapping's settings, each checked against its key's type."""
    sections = schema()
    settings: dict[str, tuple[Any, Origin]] = {}
    for section, table in mapping.items():
        section = str(section)
        if section not in sections:
            if not isinstance(table, Mapping):
                raise ConfigError(f"{prefix}:{section}: settings go in a section{_suggest_section_for(section)}")
            raise ConfigError(f"{prefix}: unknown section [{section}]{_suggest(section, sections, '[{}]')}")
        if not isinstance(table, Mapping):
            hint = _suggest_section_for(section) if section in RELOCATED else f"; a table ([{section}])"
            raise ConfigError(f"{prefix}:{section}: expected a table, got {_describe(table, False)}{hint}")
        keys = sections[section]
        for name, value in table.items():
            key = keys.get(str(name))
            if key is None:
                raise ConfigError(f"{prefix}:{section}.{name}: unknown key{_suggest_key(section, str(name))}")
            settings[key.dotted] = (check(key, value, f"{prefix}:{key.dotted}", base), origin)
    return settings


def check(key: Key, value: Any, where: str, base: Path | None) -> Any:
    """`value` (from a file, a mapping or the command line) as the key's type, or a ConfigError naming `where`."""
    kind = key.kind
    fits = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "path": lambda v: isinstance(v, (str, Path)),
        "list": lambda v: isinstance(v, (list, tuple)) and all(isinstance(item, str) for item in v),
        "table": lambda v: isinstance(v, Mapping) and all(isinstance(item, str) for item in v.values()),
    }[kind]
    if not fits(value):
        raise ConfigError(f"{where}: expected {EXPECTED[kind]}, got {_describe(value, key.secret)}")
    if kind == "float":
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if kind == "list":
        return tuple(value)
    if kind == "table":
        return {str(name): item for name, item in value.items()}
    if kind == "path":
        if not str(value):  # an unset certificate, say; never "." by accident
            if key.python is Path:
                raise ConfigError(f"{where}: expected a path, got an empty string")
            return ""
        path = Path(value).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        return path if key.python is Path else str(path)
    return value


def read_environment(environ: Mapping[str, str]) -> dict[str, tuple[Any, Origin]]:
    """NEO_AGENT_* variables, each parsed as its key's type (lists "a,b"; tables per key below)."""
    settings: dict[str, tuple[Any, Origin]] = {}
    for key in all_keys().values():
        raw = environ.get(key.env)
        if raw is not None:
            settings[key.dotted] = (_parse_env(key, raw), Origin("env", key.env))
    return settings


def _parse_env(key: Key, raw: str) -> Any:
    if key.dotted == "http.credentials":
        return parse_credentials(raw)  # its errors name the entry by position, never the secret
    parsers = {"str": str, "int": int, "float": float, "bool": _boolean, "list": _comma_list,
               "table": _role_alias_map, "path": lambda text: key.python(text)}
    try:
        return parsers[key.kind](raw)
    except ValueError as exc:
        detail = f" ({exc})" if key.kind == "table" else ""
        shown = "(a secret)" if key.secret else repr(raw)
        type_name = getattr(key.python, "__name__", str(key.python))
        raise ConfigError(f"{key.env}: cannot read {shown} as {type_name}{detail}") from None


def read_overrides(overrides: Mapping[str, Any], extra: dict[str, Any]) -> dict[str, tuple[Any, Origin]]:
    """The command line's values: AgentConfig field names (state_dir, http) or dotted keys; None is unset.

    A whole section object (bench=BenchConfig(...)) sets each of its keys; OVERRIDE_ONLY fields
    go to `extra`, straight to AgentConfig.
    """
    keys, sections = all_keys(), schema()
    by_attr = {key.attr: key for key in keys.values()}
    settings: dict[str, tuple[Any, Origin]] = {}
    origin = Origin("cli")
    for name, value in overrides.items():
        if value is None:
            continue
        if name in OVERRIDE_ONLY:
            extra[name] = value
            continue
        if dataclasses.is_dataclass(value) and name in sections and (name,) not in by_attr:
            for field in dataclasses.fields(value):
                key = sections[name][field.name]
                settings[key.dotted] = (check(key, getattr(value, field.name), f"{key.dotted} (command line)", None),
                                        origin)
            continue
        key = by_attr.get((name,)) or keys.get(name)
        if key is None:
            raise ConfigError(f"{name} (command line): not a setting{_suggest(name, keys, '{}')}")
        settings[key.dotted] = (check(key, value, f"{key.dotted} (command line)", None), origin)
    return settings


def build(settings: dict[str, tuple[Any, Origin]], extra: dict[str, Any]) -> AgentConfig:
    """AgentConfig from checked settings; its own validation's errors say where the value came from."""
    keys = all_keys()
    hints = typing.get_type_hints(AgentConfig)
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for name, (value, _) in settings.items():
        attr = keys[name].attr
        if len(attr) == 1:
            top[attr[0]] = value
        else:
            sections.setdefault(attr[0], {})[attr[1]] = value
    for name, values in sections.items():
        top[name] = hints[name](**values)
    top.update(extra)
    try:
        return AgentConfig(**top)
    except ConfigError as exc:
        raise locate(exc, settings) from exc


LEADING_KEY = re.compile(r"^([a-z0-9_]+(?:\.[a-z0-9_]+)?): (.*)$", re.DOTALL)


def locate(error: ConfigError, settings: dict[str, tuple[Any, Origin]]) -> ConfigError:
    """A validation error ("mqtt.port: not a port") with where its key was set, when it was set."""
    found = LEADING_KEY.match(str(error))
    if not found:
        return error
    name, rest = found.groups()
    by_attr = {key.attr: key for key in all_keys().values()}
    key = by_attr.get(tuple(name.split(".")))
    if key is None or key.dotted not in settings:
        return error
    origin = settings[key.dotted][1]
    if origin.layer in ("file", "mapping"):
        return ConfigError(f"{origin.where}:{key.dotted}: {rest}")
    where = origin.where if origin.layer == "env" else "command line"
    return ConfigError(f"{key.dotted} ({where}): {rest}")


def stray_variables(environ: Mapping[str, str]) -> list[str]:
    """NEO_AGENT_* variables that are no setting (a typo in agent.env goes unnoticed otherwise)."""
    known = {key.env for key in all_keys().values()} | {CONFIG_ENV}
    notes = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            notes.append(f"{name} is not a setting and is ignored{_suggest(name, known, '{}')}")
    return notes


# --- check-config ---------------------------------------------------------------------------
SHOWN_SECRET = "(set)"
ORIGIN_COLUMN = 44


def render(loaded: Loaded) -> str:
    """The effective configuration as TOML-ish text, each key with where it came from; secrets as (set)."""
    lines = [f"# file: {loaded.file_note}",
             "# order: default < file < env (NEO_AGENT_*) < cli (command line); each key says which one set it"]
    lines += [f"# note: {note}" for note in loaded.notes]
    fresh = _defaults()
    for section, keys in schema().items():
        lines += ["", f"[{section}]"]
        for name, key in keys.items():
            value = loaded.config
            for part in key.attr:
                value = getattr(value, part)
            origin = loaded.origins.get(key.dotted)
            label = str(origin) if origin else ("default" if value == fresh.get(key.dotted) else "derived")
            lines.append(f"{f'{name} = {_toml(value, key.secret)}':<{ORIGIN_COLUMN - 2}}  # {label}")
    return "\n".join(lines)


def _defaults() -> dict[str, Any]:
    """Each key's default as the dataclasses make it (to tell a default from a derived value)."""
    config = AgentConfig.__new__(AgentConfig)  # the fields' defaults without validation
    for field in dataclasses.fields(AgentConfig):
        if field.default is not dataclasses.MISSING:
            setattr(config, field.name, field.default)
        elif field.default_factory is not dataclasses.MISSING:
            setattr(config, field.name, field.default_factory())
    values = {}
    for key in all_keys().values():
        value = config
        for part in key.attr:
            value = getattr(value, part)
        values[key.dotted] = value
    return values


def _toml(value: Any, secret: bool) -> str:
    if isinstance(value, dict):
        shown = (SHOWN_SECRET if secret else json.dumps(item) for item in value.values())
        return "{ " + ", ".join(f"{json.dumps(name)} = {item}" for name, item in zip(value, shown)) + " }" \
            if value else "{}"
    if secret:
        return SHOWN_SECRET if value else '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(json.dumps(item) for item in value) + "]"
    return json.dumps(str(value))


# --- helpers ----------------------------------------------------------------------------------
def _suggest(name: str, choices, template: str) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {template.format(close[0])}?" if close else ""


def _suggest_key(section: str, name: str) -> str:
    """Nearest key in the section; else the sections that do have a key of that name."""
    keys = schema()[section]
    if name in RELOCATED:  # AgentConfig.http, written under [agent]
        return f"; did you mean {'.'.join(RELOCATED[name])}?"
    close = difflib.get_close_matches(name, list(keys), n=1)
    if close:
        return f"; did you mean {section}.{close[0]}?"
    elsewhere = [key.dotted for key in all_keys().values() if key.name == name]
    if elsewhere:
        return f"; it is a key of {' and '.join(elsewhere)}"
    return f" (the keys of [{section}]: {', '.join(keys)})"


def _suggest_section_for(name: str) -> str:
    """For a key written above every [section]: the sections that have it, or the nearest key."""
    owners = [key.dotted for key in all_keys().values() if key.name == name]
    if name in RELOCATED:
        owners = [".".join(RELOCATED[name])]
    if owners:
        return f"; did you mean {' or '.join(owners)} (under [{owners[0].split('.')[0]}])?"
    return _suggest(name, {key.name: key for key in all_keys().values()}, "{}")


def _describe(value: Any, secret: bool) -> str:
    """A value's TOML type, and the value itself when it is short and not a secret."""
    names = [(bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
             (Mapping, "a table"), ((list, tuple), "an array"), (datetime.datetime, "a date-time"),
             (datetime.date, "a date"), (datetime.time, "a time")]
    kind = next((name for types, name in names if isinstance(value, types)), f"a {type(value).__name__}")
    if isinstance(value, Mapping):
        bad = next((name for name, item in value.items() if not isinstance(item, str)), None)
        return f"{kind} whose {bad!r} is {_describe(value[bad], True)}" if bad is not None else kind
    if secret or isinstance(value, (list, tuple)):
        return kind
    if isinstance(value, bool):
        return f"{kind} {'true' if value else 'false'}"
    if isinstance(value, (datetime.date, datetime.time)):
        return f"{kind} {value.isoformat()}"
    shown = json.dumps(value) if isinstance(value, str) else repr(value)
    return f"{kind} {shown[:60]}"


def _comma_list(text: str) -> tuple[str, ...]:
    """NEO_AGENT_MQTT_ALLOWED_ACCOUNTS and the like: "a,b,c"; blanks ignored."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _role_alias_map(text: str) -> dict[str, str]:
    """NEO_AGENT_S3_ROLE_ALIASES: "ARN=ALIAS,ARN2=ALIAS2".

    Role names may hold "," and "=", so an entry ends only where the next one starts with
    "arn:", and the alias is what follows the entry's last "=". Errors name entries by position.
    """
    mapping: dict[str, str] = {}
    entries = [part.strip() for part in re.split(r",(?=\s*arn:)", text) if part.strip()]
    for index, entry in enumerate(entries, start=1):
        arn, equals, alias = entry.rpartition("=")
        if not equals or not arn.strip() or not alias.strip():
            raise ValueError(f"entry {index} is not ROLE_ARN=ROLE_ALIAS")
        mapping[arn.strip()] = alias.strip()
    return mapping


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)
