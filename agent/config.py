"""The agent's configuration: typed sections, every default a named constant.

Loaded in a fixed order: defaults, then the environment (NEO_AGENT_*), then explicit
arguments (the command line). A bad value fails fast with a ConfigError naming the key.
"""
from __future__ import annotations

import dataclasses
import os
import re
import socket
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "000000000000"  # the local agent's account; a fleet sets its real one
DEFAULT_QUEUE_LIMIT = 100
DEFAULT_CONCURRENCY = 1
DEFAULT_MEMORY_FRACTION = 0.75  # of physical memory, for the compile child's whole process group
DEFAULT_STOP_GRACE_S = 10.0  # SIGTERM -> SIGKILL, as SageMaker's StopCompilationJob does
DEFAULT_DEADLINE_GRACE_S = 5.0  # the parent kills the group this long after the child's own deadline
DEFAULT_WARMUP_RUNS = 3
DEFAULT_WARMUP_SECONDS = 0.2  # trtexec's default warm-up
DEFAULT_MIN_ITERATIONS = 50
DEFAULT_MIN_SECONDS = 2.0
DEFAULT_MAX_SECONDS = 60.0
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-3
DEFAULT_HTTP = "127.0.0.1:8573"  # the SageMaker-protocol endpoint; on loopback it needs no signature


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "neo-agent"


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def physical_memory_mb() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)


def parse_credentials(text: str) -> dict[str, str]:
    """NEO_AGENT_HTTP_CREDENTIALS, "AKID:SECRET[,AKID2:SECRET2]", as {access key id: secret}.

    An error names the entry by position, never by content, so a secret is never echoed.
    """
    credentials: dict[str, str] = {}
    for index, entry in enumerate(filter(None, (part.strip() for part in text.split(","))), start=1):
        key_id, _, secret = entry.partition(":")
        if not key_id.strip() or not secret:
            raise ConfigError(f"NEO_AGENT_HTTP_CREDENTIALS: entry {index} is not ACCESS_KEY_ID:SECRET")
        credentials[key_id.strip()] = secret
    return credentials


@dataclasses.dataclass
class BenchConfig:
    """How latency is measured (see docs in README: Benchmark method)."""

    warmup_runs: int = DEFAULT_WARMUP_RUNS
    warmup_seconds: float = DEFAULT_WARMUP_SECONDS
    min_iterations: int = DEFAULT_MIN_ITERATIONS
    min_seconds: float = DEFAULT_MIN_SECONDS
    max_seconds: float = DEFAULT_MAX_SECONDS
    threads: int = dataclasses.field(default_factory=available_cores)


@dataclasses.dataclass
class VerifyConfig:
    """An output element passes when |tvm - ref| <= atol + rtol * |ref| (numpy.allclose's rule)."""

    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL


DEFAULT_IOT_PORT = 8883  # MQTT over TLS with a client certificate (AWS IoT Core's mTLS port)
DEFAULT_IOT_KEEP_ALIVE_S = 300  # AWS IoT Core accepts 30..1200
DEFAULT_IOT_SESSION_EXPIRY_S = 3600  # AWS IoT Core's default persistent-session expiry
DEFAULT_IOT_MIN_RECONNECT_S = 1.0  # the CRT client's reconnect backoff, with full jitter
DEFAULT_IOT_MAX_RECONNECT_S = 120.0
DEFAULT_IOT_CONNECT_TIMEOUT_S = 30.0  # how long start() waits for the first CONNACK
DEFAULT_JOBS_PROGRESS_INTERVAL_S = 10.0  # at most one IN_PROGRESS update this often within a stage
DEFAULT_JOBS_STEP_MARGIN_MIN = 10  # added to MaxRuntimeInSeconds for the execution's step timeout


@dataclasses.dataclass
class IotCoreConfig:
    """AWS IoT Core (MQTT 5, mTLS) and IoT Jobs on the same connection; off while endpoint is empty.

    Paths are the thing's certificate, its private key and the CA to trust (empty: the system's).
    The thing name is the MQTT client id and the `{thing}` in every topic.
    """

    endpoint: str = ""
    port: int = DEFAULT_IOT_PORT
    thing_name: str = ""
    cert: str = ""
    key: str = ""
    ca: str = ""
    keep_alive_s: int = DEFAULT_IOT_KEEP_ALIVE_S
    session_expiry_s: int = DEFAULT_IOT_SESSION_EXPIRY_S
    min_reconnect_s: float = DEFAULT_IOT_MIN_RECONNECT_S
    max_reconnect_s: float = DEFAULT_IOT_MAX_RECONNECT_S
    connect_timeout_s: float = DEFAULT_IOT_CONNECT_TIMEOUT_S
    jobs: bool = True
    jobs_progress_interval_s: float = DEFAULT_JOBS_PROGRESS_INTERVAL_S
    jobs_step_margin_min: int = DEFAULT_JOBS_STEP_MARGIN_MIN

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint)

    def validate(self) -> None:
        if not self.enabled:
            return
        for key in ("thing_name", "cert", "key"):
            if not getattr(self, key):
                raise ConfigError(f"iotcore.{key}: required when iotcore.endpoint is set")
        if not (1 <= len(self.thing_name) <= 128) or not all(c.isalnum() or c in ":_-" for c in self.thing_name):
            raise ConfigError(f"iotcore.thing_name: 1-128 characters of [a-zA-Z0-9:_-], got {self.thing_name!r}")
        if not 1 <= int(self.port) <= 65535:
            raise ConfigError(f"iotcore.port: not a port: {self.port!r}")
        if not 30 <= int(self.keep_alive_s) <= 1200:
            raise ConfigError(f"iotcore.keep_alive_s: AWS IoT Core accepts 30 to 1200, got {self.keep_alive_s!r}")
        if not 0 < float(self.min_reconnect_s) <= float(self.max_reconnect_s):
            raise ConfigError("iotcore.min_reconnect_s: must be positive and not above iotcore.max_reconnect_s")
        for key in ("session_expiry_s", "connect_timeout_s", "jobs_progress_interval_s", "jobs_step_margin_min"):
            if float(getattr(self, key)) < 0:
                raise ConfigError(f"iotcore.{key}: must not be negative")


DEFAULT_MQTT_HOST = "localhost"
DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTT_PROTOCOL = "5"  # or "3.1.1"
DEFAULT_MQTT_KEEPALIVE_S = 60
DEFAULT_MQTT_MAX_PAYLOAD_BYTES = 128 * 1024  # AWS IoT Core's MQTT payload limit; the same here
MQTT_PROTOCOLS = ("5", "3.1.1")
ROLE_ARN_ACCOUNT = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/")


def default_thing_name() -> str:
    """The host name as an AWS IoT thing name: [a-zA-Z0-9:_-], dots and the rest become "-"."""
    name = "".join(c if c.isascii() and (c.isalnum() or c in ":_-") else "-" for c in socket.gethostname())
    return name[:128] or "neo-agent"


@dataclasses.dataclass
class MqttConfig:
    """The plain MQTT transport (paho-mqtt, any broker); off unless `enabled`.

    The thing name is the MQTT client id and the `{thing}` in every topic. The allow-lists,
    when not empty, limit which RoleArns a CreateCompilationJob may name: by the role's account
    and by the exact ARN (both must pass). Secrets stay out of repr and the compile child.
    """

    enabled: bool = False
    host: str = DEFAULT_MQTT_HOST
    port: int = DEFAULT_MQTT_PORT
    thing_name: str = dataclasses.field(default_factory=default_thing_name)
    protocol: str = DEFAULT_MQTT_PROTOCOL
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    keepalive: int = DEFAULT_MQTT_KEEPALIVE_S
    max_payload_bytes: int = DEFAULT_MQTT_MAX_PAYLOAD_BYTES
    allowed_accounts: tuple[str, ...] = ()
    allowed_role_arns: tuple[str, ...] = ()

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    def validate(self) -> None:
        self.protocol = str(self.protocol)
        self.allowed_accounts = tuple(self.allowed_accounts)
        self.allowed_role_arns = tuple(self.allowed_role_arns)
        if not self.host:
            raise ConfigError("mqtt.host: required")
        if not 1 <= int(self.port) <= 65535:
            raise ConfigError(f"mqtt.port: not a port: {self.port!r}")
        if self.protocol not in MQTT_PROTOCOLS:
            raise ConfigError(f"mqtt.protocol: must be 5 or 3.1.1, got {self.protocol!r}")
        if not (1 <= len(self.thing_name) <= 128) or not all(c.isalnum() or c in ":_-" for c in self.thing_name):
            raise ConfigError(f"mqtt.thing_name: 1-128 characters of [a-zA-Z0-9:_-], got {self.thing_name!r}")
        if self.password and not self.username:
            raise ConfigError("mqtt.password: given without mqtt.username")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("mqtt.tls_cert: a client certificate needs mqtt.tls_key, and the other way round")
        for key in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                raise ConfigError(f"mqtt.{key}: no such file: {path}")
        if not 5 <= int(self.keepalive) <= 65535:
            raise ConfigError(f"mqtt.keepalive: 5 to 65535 seconds, got {self.keepalive!r}")
        if int(self.max_payload_bytes) < 1024:
            raise ConfigError(f"mqtt.max_payload_bytes: at least 1024, got {self.max_payload_bytes!r}")
        for account in self.allowed_accounts:
            if not (len(account) == 12 and account.isdigit()):
                raise ConfigError(f"mqtt.allowed_accounts: {account!r} is not a 12-digit account id")
        for arn in self.allowed_role_arns:
            if not ROLE_ARN_ACCOUNT.match(arn):
                raise ConfigError(f"mqtt.allowed_role_arns: {arn!r} is not an IAM role ARN")


@dataclasses.dataclass
class AgentConfig:
    state_dir: Path = dataclasses.field(default_factory=default_state_dir)
    region: str = DEFAULT_REGION
    account: str = DEFAULT_ACCOUNT
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    concurrency: int = DEFAULT_CONCURRENCY
    memory_limit_mb: int = dataclasses.field(
        default_factory=lambda: int(physical_memory_mb() * DEFAULT_MEMORY_FRACTION)
    )
    stop_grace_s: float = DEFAULT_STOP_GRACE_S
    deadline_grace_s: float = DEFAULT_DEADLINE_GRACE_S
    bench: BenchConfig = dataclasses.field(default_factory=BenchConfig)
    verify: VerifyConfig = dataclasses.field(default_factory=VerifyConfig)
    iotcore: IotCoreConfig = dataclasses.field(default_factory=IotCoreConfig)
    mqtt: MqttConfig = dataclasses.field(default_factory=MqttConfig)
    # The SageMaker-protocol HTTP endpoint (HOST:PORT) and the SigV4 keys it accepts, access
    # key id -> secret. The secrets stay out of repr, logs and the compile child's spec.
    http: str = DEFAULT_HTTP
    http_credentials: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    # The module whose run() the compile child calls. Tests swap in a scripted pipeline to
    # drive the runner through timings a real compile cannot promise; nothing else should.
    pipeline_module: str = "agent.pipeline"

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.validate()

    def validate(self) -> None:
        if not (len(self.account) == 12 and self.account.isdigit()):
            raise ConfigError(f"account: must be 12 digits, got {self.account!r}")
        if not self.region or not all(c.isalnum() or c == "-" for c in self.region):
            raise ConfigError(f"region: not a region name: {self.region!r}")
        for key in ("queue_limit", "concurrency", "memory_limit_mb"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key}: must be at least 1, got {getattr(self, key)!r}")
        for key in ("stop_grace_s", "deadline_grace_s"):
            if float(getattr(self, key)) < 0:
                raise ConfigError(f"{key}: must not be negative")
        if self.bench.threads < 1:
            raise ConfigError("bench.threads: must be at least 1")
        if self.bench.min_iterations < 1:
            raise ConfigError("bench.min_iterations: must be at least 1")
        self.iotcore.validate()
        self.mqtt.validate()

    @property
    def db_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    def job_dir(self, name: str) -> Path:
        return self.jobs_dir / name.lower()

    @classmethod
    def load(cls, **overrides: Any) -> "AgentConfig":
        """Defaults, then NEO_AGENT_* environment variables, then `overrides`."""
        values: dict[str, Any] = {}
        env = os.environ
        for key, cast in (
            ("state_dir", Path),
            ("region", str),
            ("account", str),
            ("queue_limit", int),
            ("concurrency", int),
            ("memory_limit_mb", int),
            ("stop_grace_s", float),
            ("deadline_grace_s", float),
            ("http", str),
        ):
            raw = env.get(f"NEO_AGENT_{key.upper()}")
            if raw is not None:
                try:
                    values[key] = cast(raw)
                except ValueError:
                    raise ConfigError(f"NEO_AGENT_{key.upper()}: cannot read {raw!r} as {cast.__name__}") from None
        if env.get("NEO_AGENT_HTTP_CREDENTIALS") is not None:
            values["http_credentials"] = parse_credentials(env["NEO_AGENT_HTTP_CREDENTIALS"])
        for section_name, section in (("bench", BenchConfig), ("verify", VerifyConfig)):
            fields = {}
            for field in dataclasses.fields(section):
                name = f"NEO_AGENT_{section_name.upper()}_{field.name.upper()}"
                raw = env.get(name)
                if raw is None:
                    continue
                cast = int if field.type in ("int", int) else float
                try:
                    fields[field.name] = cast(raw)
                except ValueError:
                    raise ConfigError(f"{name}: cannot read {raw!r} as {cast.__name__}") from None
            if fields:
                values[section_name] = section(**fields)
        iotcore = _section_from_env(IotCoreConfig, "NEO_AGENT_IOTCORE_")
        if iotcore:
            values["iotcore"] = IotCoreConfig(**iotcore)
        mqtt = _section_from_env(MqttConfig, "NEO_AGENT_MQTT_")
        if mqtt:
            values["mqtt"] = MqttConfig(**mqtt)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_child(self) -> dict[str, Any]:
        """What the compile child needs, as JSON."""
        data = dataclasses.asdict(self)
        data["state_dir"] = str(self.state_dir)
        data.pop("http_credentials")  # the child never serves HTTP, and spec.json is a file on disk
        data.pop("mqtt")  # nor MQTT; and the broker password stays off the disk
        data.pop("iotcore")  # nor AWS IoT Core
        return data


def _section_from_env(section: type, prefix: str) -> dict[str, Any]:
    """A section's fields from `prefix` + FIELD environment variables, each cast to its type."""
    casts = {"int": int, "float": float, "str": str, "bool": _boolean, "tuple[str, ...]": _comma_list}
    fields = {}
    for field in dataclasses.fields(section):
        name = f"{prefix}{field.name.upper()}"
        raw = os.environ.get(name)
        if raw is None:
            continue
        cast = casts[str(field.type)]
        try:
            fields[field.name] = cast(raw)
        except ValueError:
            raise ConfigError(f"{name}: cannot read {raw!r} as {field.type}") from None
    return fields


def _comma_list(text: str) -> tuple[str, ...]:
    """NEO_AGENT_MQTT_ALLOWED_ACCOUNTS and the like: "a,b,c"; blanks ignored."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)
