"""On-device tuning: MetaSchedule on this machine, within a budget, remembered across jobs.

    tune_and_build(mod, target, out_dir, budget_s=..., trials=..., database=db, layout=...)
        -> TunedBuild: build.Built plus .tuning, the report for metrics.json     (loop.py)
    open_database(state_dir, profile, tvm_config, max_mb) -> TuningDatabase       (database.py)
    db.pull(s3_prefix) / db.push(s3_prefix)       share records among identical devices
    job_budget(options, tuning_config, seconds_left) -> Budget   what a job's compile may spend

The modules: loop (the steps), plan (trials per kernel by latency share), search (MetaSchedule,
one task at a time, and the rule-vs-tuned measurement), profile (per-kernel time of a build),
database (the records on disk and in S3), bound (what the databases may take on disk). TVM
is imported inside functions.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.compile.tuning import bound
from agent.compile.tuning.database import DatabaseKey, TuningDatabase
from agent.compile.tuning.loop import TunedBuild, tune_and_build
from agent.config import DEFAULT_TUNING_MAX_DATABASE_MB

if TYPE_CHECKING:  # pragma: no cover
    from agent.config import TuningConfig

DATABASE_DIR = "tuning"   # under the agent's state directory


def open_database(state_dir: Path, profile: str, tvm_config: dict[str, Any],
                  max_mb: int = DEFAULT_TUNING_MAX_DATABASE_MB) -> TuningDatabase:
    """The database for this target: state_dir/tuning/<profile-cpu-cores-hash>/, with every
    database there together kept within `max_mb` MiB (tuning.max_database_mb). Temporary
    files that killed writes and pulls left in any of them go first."""
    root = Path(state_dir) / DATABASE_DIR
    bound.remove_stale_files(root)
    return TuningDatabase(root, DatabaseKey.for_target(profile, tvm_config), max_bytes=int(max_mb) * 2**20)


@dataclasses.dataclass(frozen=True)
class Budget:
    """What one job's compile stage may spend on tuning: tune_and_build's budget_s and trials."""

    seconds: float | None   # None: no tuning (what the database holds is still applied)
    trials: int | None      # None: as many as the seconds buy
    source: str             # where the budget came from, for metrics.json and the job's log

    @property
    def tunes(self) -> bool:
        return self.seconds is not None and self.seconds > 0 and (self.trials is None or self.trials > 0)

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": None if self.seconds is None else round(self.seconds, 1), "trials": self.trials,
                "source": self.source}


def job_budget(options: dict[str, Any], config: "TuningConfig", seconds_left: float) -> Budget:
    """The budget a job's request and the agent's settings allow.

    CompilerOptions' tuning_seconds and tuning_trials (agent.device.target) say what the
    request wants; a request that names neither gets `config.default_seconds`. Whatever is
    asked, tuning ends early enough to leave `config.rest_of_job_seconds` of the job's
    MaxRuntimeInSeconds for the stages after it, and lasts at most `config.max_seconds`.
    """
    cap = max(0.0, min(float(config.max_seconds), seconds_left - float(config.rest_of_job_seconds)))
    trials = options.get("tuning_trials")
    if "tuning_seconds" in options:
        asked, source = float(options["tuning_seconds"]), "CompilerOptions tuning_seconds"
    elif trials is not None:
        asked, source = cap, "CompilerOptions tuning_trials"
    else:
        asked, source = float(config.default_seconds), "the agent's tuning.default_seconds"
    seconds = min(asked, cap)
    if seconds < asked:
        limit = ("tuning.max_seconds" if cap == float(config.max_seconds)
                 else f"MaxRuntimeInSeconds less {config.rest_of_job_seconds:g} s for the later stages")
        source += f", cut to {seconds:.0f} s by {limit}"
    if seconds <= 0 or trials == 0:
        return Budget(None, None, source)
    return Budget(seconds, trials, source)


__all__ = ["Budget", "DatabaseKey", "TunedBuild", "TuningDatabase", "job_budget", "open_database",
           "tune_and_build"]
