"""The agent's configuration: typed sections, every default a named constant.

Loaded in a fixed order: defaults, then the environment (NEO_AGENT_*), then explicit
arguments (the command line). A bad value fails fast with a ConfigError naming the key.
"""
from __future__ import annotations

import dataclasses
import os
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


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "neo-agent"


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def physical_memory_mb() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)


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
        ):
            raw = env.get(f"NEO_AGENT_{key.upper()}")
            if raw is not None:
                try:
                    values[key] = cast(raw)
                except ValueError:
                    raise ConfigError(f"NEO_AGENT_{key.upper()}: cannot read {raw!r} as {cast.__name__}") from None
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
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_child(self) -> dict[str, Any]:
        """What the compile child needs, as JSON."""
        data = dataclasses.asdict(self)
        data["state_dir"] = str(self.state_dir)
        return data
