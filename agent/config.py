"""The agent's configuration: typed sections, every default a named constant.

Loaded in a fixed order (agent.configfile): defaults, then the file (agent.toml), then the
environment (NEO_AGENT_*), then explicit arguments (the command line). A bad value fails fast
with a ConfigError naming the key. These dataclasses are the schema: a field added here is a
key of the file, a variable and a line of `neo-agent check-config`; repr=False marks a secret.
"""
from __future__ import annotations

import dataclasses
import os
import re
import socket
import stat
import typing
from pathlib import Path
from typing import Any, Mapping

from agent.errors import ConfigError


def check_private_key(name: str, path: str) -> None:
    """A private key the configuration names must be owner-only (0600 or 0400), as ssh and the
    AWS IoT Device Client demand of theirs: one that other users can read is refused by
    name at start, before anything connects with it. A missing file is the caller's error."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if mode & 0o077:
        raise ConfigError(f"{name}: {path} can be read or written by its group or others (mode {mode:04o}); "
                          f"a private key must be owner-only: chmod 600 {path}")


def check_files(section: Any, prefix: str, keys: tuple[str, ...], private_key: str = "") -> None:
    """Each of `keys` set in `section` must name a file; `private_key`'s must be owner-only too.
    Errors name the setting as `prefix` + key."""
    for key in keys:
        path = getattr(section, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"{prefix}{key}: no such file: {path}")
    if private_key and getattr(section, private_key):
        check_private_key(prefix + private_key, getattr(section, private_key))


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
DEFAULT_MAX_RETAINED_MB = 2048  # ended jobs' files kept on disk (agent.runner.housekeeping)
DEFAULT_MIN_FREE_MB = 1024  # a job starts only with this much free in the state directory
DEFAULT_HTTP = "127.0.0.1:8573"  # the SageMaker-protocol endpoint; on loopback it needs no signature
# The channels (transport names) whose callers may name file:// locations, which read and write
# the agent user's files: by default only the HTTP endpoint (loopback, or SigV4-signed callers).
CHANNELS = ("http", "mqtt", "iotcore", "iotjobs", "greengrass")
DEFAULT_FILE_URI_CHANNELS = ("http",)


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


# On-device tuning (agent.compile.tuning). A request that names neither tuning_seconds nor
# tuning_trials in its CompilerOptions tunes for DEFAULT_TUNING_SECONDS; none tunes past
# tuning.max_seconds or into the time the rest of its job needs (its MaxRuntimeInSeconds).
DEFAULT_TUNING_SECONDS = 600.0
DEFAULT_TUNING_MAX_SECONDS = 3600.0
DEFAULT_TUNING_REST_OF_JOB_S = 180.0  # verify, benchmark, package and upload after the compile stage
# All tuning databases together (state_dir/tuning). A convolution's workload takes about
# 0.2 MiB (32 records and the workload itself); a model tunes 3-8 of them in 10 minutes, so
# 64 MiB keeps some 300 workloads: dozens of models' worth before any is evicted.
DEFAULT_TUNING_MAX_DATABASE_MB = 64


@dataclasses.dataclass
class TuningConfig:
    """How long a job may tune its kernels on this device, and where the records go.

    default_seconds   a request that asks nothing tunes this long (0: jobs tune only when asked)
    max_seconds       no request tunes longer, whatever it asks: a device resource limit
    rest_of_job_seconds  kept from MaxRuntimeInSeconds for the stages after the compile
    database          remember records across jobs (state_dir/tuning), so a kernel is tuned once
    max_database_mb   what the databases may take on disk together; past it the least recently
                      used workloads are evicted (agent.compile.tuning.bound)
    share_uri         an S3 prefix (s3://bucket/prefix) where identical devices pool their
                      records: pulled before each job tunes, merged and pushed after
    """

    default_seconds: float = dataclasses.field(default_factory=lambda: DEFAULT_TUNING_SECONDS)
    max_seconds: float = DEFAULT_TUNING_MAX_SECONDS
    rest_of_job_seconds: float = DEFAULT_TUNING_REST_OF_JOB_S
    database: bool = True
    max_database_mb: int = DEFAULT_TUNING_MAX_DATABASE_MB
    share_uri: str = ""

    def validate(self) -> None:
        for key in ("default_seconds", "max_seconds", "rest_of_job_seconds"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < float("inf"):
                raise ConfigError(f"tuning.{key}: must be a number of seconds, 0 or more; got {value!r}")
        if not isinstance(self.database, bool):
            raise ConfigError(f"tuning.database: must be true or false, got {self.database!r}")
        size = self.max_database_mb
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigError(f"tuning.max_database_mb: must be a whole number of MiB, 1 or more; got {size!r}")
        if self.share_uri and not self.share_uri.startswith(("s3://", "file://")):
            raise ConfigError(f"tuning.share_uri: must be an s3:// (or file://) prefix, got {self.share_uri!r}")
        if self.share_uri and not self.database:
            raise ConfigError("tuning.share_uri: sharing records needs tuning.database = true")


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
        check_private_key("iotcore.key", self.key)
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
        check_files(self, "mqtt.", ("tls_ca", "tls_cert", "tls_key"), private_key="tls_key")
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


IOT_ROLE_ALIAS = re.compile(r"^[\w=,@-]{1,128}$")  # AWS IoT's RoleAlias pattern
S3_ENV_PREFIX = "NEO_AGENT_S3_"


@dataclasses.dataclass
class S3Config:
    """Where this device's S3 credentials come from; the order is agent/storage/credentials.py's.

    Keys (or a named profile of the shared AWS files) win; then the AWS IoT credentials
    provider, on when `iot_endpoint` is set: the thing's certificate buys temporary
    credentials for the IAM role behind a role alias. `role_aliases` maps the RoleArns a
    CreateCompilationJob may name to their role aliases; when it is empty every job uses
    `iot_role_alias`. The thing name, certificate, key and CA default to the iotcore section's
    (one thing, one certificate). Secrets stay out of repr and off disk (see to_child).
    """

    SECRETS = ("secret_access_key", "session_token")

    access_key_id: str = ""
    secret_access_key: str = dataclasses.field(default="", repr=False)
    session_token: str = dataclasses.field(default="", repr=False)
    profile: str = ""
    iot_endpoint: str = ""
    iot_role_alias: str = ""
    iot_thing_name: str = ""
    iot_cert: str = ""
    iot_key: str = ""
    iot_ca: str = ""
    role_aliases: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def iot_enabled(self) -> bool:
        return bool(self.iot_endpoint)

    def inherit(self, iotcore: IotCoreConfig) -> None:
        """Take the thing's identity from the iotcore section where this one names none."""
        if not self.iot_thing_name:
            self.iot_thing_name = iotcore.thing_name or default_thing_name()
        if not self.iot_cert and not self.iot_key:  # a pair, or a key would meet a stranger's certificate
            self.iot_cert, self.iot_key = iotcore.cert, iotcore.key
        if not self.iot_ca:
            self.iot_ca = iotcore.ca

    def validate(self) -> None:
        self.role_aliases = dict(self.role_aliases)
        if bool(self.access_key_id) != bool(self.secret_access_key):
            missing = "secret_access_key" if self.access_key_id else "access_key_id"
            raise ConfigError(f"s3.{missing}: s3.access_key_id and s3.secret_access_key go together")
        if self.session_token and not self.access_key_id:
            raise ConfigError("s3.session_token: given without s3.access_key_id and s3.secret_access_key")
        if self.profile and self.access_key_id:
            raise ConfigError("s3.profile: give either s3.profile or s3.access_key_id, not both")
        for arn, alias in self.role_aliases.items():
            if not ROLE_ARN_ACCOUNT.match(arn):
                raise ConfigError(f"s3.role_aliases: {arn!r} is not an IAM role ARN")
            if not IOT_ROLE_ALIAS.match(alias):
                raise ConfigError(f"s3.role_aliases: {alias!r} (for {arn}) is not a role alias ([\\w=,@-], 1-128)")
        if self.iot_role_alias and not IOT_ROLE_ALIAS.match(self.iot_role_alias):
            raise ConfigError(f"s3.iot_role_alias: {self.iot_role_alias!r} is not a role alias ([\\w=,@-], 1-128)")
        if not self.iot_enabled:
            if self.iot_role_alias or self.role_aliases:
                raise ConfigError("s3.iot_endpoint: required when s3.iot_role_alias or s3.role_aliases is set")
            return
        if "/" in self.iot_endpoint or not self.iot_endpoint.strip():
            raise ConfigError(f"s3.iot_endpoint: a host name (HOST or HOST:PORT), not a URL: {self.iot_endpoint!r}")
        if not (self.iot_role_alias or self.role_aliases):
            raise ConfigError("s3.iot_role_alias: required when s3.iot_endpoint is set (or s3.role_aliases)")
        for key in ("iot_cert", "iot_key"):
            if not getattr(self, key):
                raise ConfigError(f"s3.{key}: required when s3.iot_endpoint is set (or the iotcore section's)")
        thing = self.iot_thing_name
        if not (1 <= len(thing) <= 128) or not all(c.isalnum() or c in ":_-" for c in thing):
            raise ConfigError(f"s3.iot_thing_name: 1-128 characters of [a-zA-Z0-9:_-], got {thing!r}")
        check_files(self, "s3.", ("iot_cert", "iot_key", "iot_ca"), private_key="iot_key")

    @staticmethod
    def secret_variable(field: str) -> str:
        """The environment variable that carries a secret field into the compile child."""
        return f"{S3_ENV_PREFIX}{field.upper()}"


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
    max_retained_mb: int = DEFAULT_MAX_RETAINED_MB
    min_free_mb: int = DEFAULT_MIN_FREE_MB
    # Allow CreateCompilationJob for a target this device is not: the artifact is built,
    # verification and benchmark are skipped and metrics say not measured.
    cross_compile: bool = False
    # Which channels' requests may name file:// URIs (S3Uri, S3OutputLocation); see CHANNELS.
    # The agent's in-process API (the demo, tests) always may.
    file_uri_channels: tuple[str, ...] = DEFAULT_FILE_URI_CHANNELS
    bench: BenchConfig = dataclasses.field(default_factory=BenchConfig)
    verify: VerifyConfig = dataclasses.field(default_factory=VerifyConfig)
    tuning: TuningConfig = dataclasses.field(default_factory=TuningConfig)
    iotcore: IotCoreConfig = dataclasses.field(default_factory=IotCoreConfig)
    mqtt: MqttConfig = dataclasses.field(default_factory=MqttConfig)
    s3: S3Config = dataclasses.field(default_factory=S3Config)
    # The SageMaker-protocol HTTP endpoint (HOST:PORT) and the SigV4 keys it accepts, access
    # key id -> secret. The secrets stay out of repr, logs and the compile child's spec.
    http: str = DEFAULT_HTTP
    http_credentials: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    # HTTPS instead of HTTP: the endpoint's certificate (PEM, its chain after it) and its key.
    http_tls_cert: str = ""
    http_tls_key: str = ""
    # The module whose run() the compile child calls. Tests swap in a scripted pipeline to
    # drive the runner through timings a real compile cannot promise; nothing else should.
    pipeline_module: str = "agent.pipeline"

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.file_uri_channels = tuple(self.file_uri_channels)
        self.validate()

    def validate(self) -> None:
        if not (len(self.account) == 12 and self.account.isdigit()):
            raise ConfigError(f"account: must be 12 digits, got {self.account!r}")
        if not self.region or not all(c.isalnum() or c == "-" for c in self.region):
            raise ConfigError(f"region: not a region name: {self.region!r}")
        for key in ("queue_limit", "concurrency", "memory_limit_mb"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key}: must be at least 1, got {getattr(self, key)!r}")
        if bool(self.http_tls_cert) != bool(self.http_tls_key):
            raise ConfigError("http_tls_cert: a certificate for the HTTP endpoint needs http_tls_key, "
                              "and the other way round")
        check_files(self, "", ("http_tls_cert", "http_tls_key"), private_key="http_tls_key")
        for key in ("max_retained_mb", "min_free_mb"):
            if int(getattr(self, key)) < 0:
                raise ConfigError(f"{key}: must not be negative, got {getattr(self, key)!r}")
        for key in ("stop_grace_s", "deadline_grace_s"):
            if float(getattr(self, key)) < 0:
                raise ConfigError(f"{key}: must not be negative")
        if not isinstance(self.cross_compile, bool):
            raise ConfigError(f"cross_compile: must be true or false, got {self.cross_compile!r}")
        unknown = [c for c in self.file_uri_channels if c not in CHANNELS]
        if unknown:
            raise ConfigError(f"file_uri_channels: {unknown!r} not among the channels {', '.join(CHANNELS)}")
        if self.bench.threads < 1:
            raise ConfigError("bench.threads: must be at least 1")
        if self.bench.min_iterations < 1:
            raise ConfigError("bench.min_iterations: must be at least 1")
        self.tuning.validate()
        self.iotcore.validate()
        self.mqtt.validate()
        self.s3.inherit(self.iotcore)
        self.s3.validate()

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
        """Defaults < the configuration file < NEO_AGENT_* variables < `overrides` (agent.configfile)."""
        from agent.configfile import load_config

        return load_config(overrides=overrides)

    @classmethod
    def from_mapping(cls, mapping: dict, *, source: str = "<mapping>") -> "AgentConfig":
        """Defaults < `mapping`, shaped like the file ({"agent": {...}, "mqtt": {...}}), with the file's
        checks; errors name `source`:section.key. For configuration that arrives whole (a deployment)."""
        from agent.configfile import config_from_mapping

        return config_from_mapping(mapping, source=source)

    def to_child(self) -> dict[str, Any]:
        """What the compile child needs, as JSON; it lands in spec.json, so no secret goes in."""
        data = dataclasses.asdict(self)
        data["state_dir"] = str(self.state_dir)
        data.pop("http_credentials")  # the child never serves HTTP, and spec.json is a file on disk
        data.pop("mqtt")  # nor MQTT; and the broker password stays off the disk
        data.pop("iotcore")  # nor AWS IoT Core (s3 already holds the thing's identity it needs)
        for field in S3Config.SECRETS:  # these travel in the child's environment instead
            data["s3"].pop(field)
        return data

    def child_environment(self) -> dict[str, str]:
        """The S3 secrets as NEO_AGENT_S3_* variables, for the compile child's environment.

        Empty ones too, so the child sees this configuration's values and not whatever the
        agent's own environment happened to hold.
        """
        return {S3Config.secret_variable(field): getattr(self.s3, field) for field in S3Config.SECRETS}

    @classmethod
    def from_child(cls, data: dict[str, Any], environ: Mapping[str, str] | None = None) -> "AgentConfig":
        """The inverse of to_child(): the spec's JSON plus the secrets from `environ`."""
        environ = os.environ if environ is None else environ
        values = dict(data)
        for name, hint in typing.get_type_hints(cls).items():  # the sections, back from dicts
            if dataclasses.is_dataclass(hint) and isinstance(values.get(name), dict):
                values[name] = hint(**values[name])
        s3 = dataclasses.asdict(values.get("s3") or S3Config())
        for field in S3Config.SECRETS:
            s3[field] = environ.get(S3Config.secret_variable(field), "")
        values["s3"] = S3Config(**s3)
        return cls(**values)

