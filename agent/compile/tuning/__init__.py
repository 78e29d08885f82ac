"""On-device tuning: MetaSchedule on this machine, within a budget, remembered across jobs.

    tune_and_build(mod, target, out_dir, budget_s=..., trials=..., database=db, layout=...)
        -> TunedBuild: build.Built plus .tuning, the report for metrics.json     (loop.py)
    open_database(state_dir, profile, tvm_config) -> TuningDatabase                (database.py)
    db.pull(s3_prefix) / db.push(s3_prefix)       share records among identical devices
    job_budget(seconds_left, requested_s)         what the compile stage may spend

The modules: loop (the steps), plan (trials per kernel by latency share), search (MetaSchedule,
one task at a time, and the rule-vs-tuned measurement), profile (per-kernel time of a build),
database (the records on disk and in S3). TVM is imported inside functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.compile.tuning.database import DatabaseKey, TuningDatabase
from agent.compile.tuning.loop import TunedBuild, tune_and_build

DATABASE_DIR = "tuning"   # under the agent's state directory
REST_OF_JOB_S = 180.0     # verify, benchmark, package and upload after the compile stage


def open_database(state_dir: Path, profile: str, tvm_config: dict[str, Any]) -> TuningDatabase:
    """The database for this target: state_dir/tuning/<profile-cpu-cores-hash>/."""
    return TuningDatabase(Path(state_dir) / DATABASE_DIR, DatabaseKey.for_target(profile, tvm_config))


def job_budget(seconds_left: float, requested_s: float | None = None,
               rest_of_job_s: float = REST_OF_JOB_S) -> float:
    """Seconds tune_and_build may take: what the job has left less what its later stages
    need, and no more than the request asked for (CompilerOptions' tuning_seconds)."""
    available = max(0.0, seconds_left - rest_of_job_s)
    return available if requested_s is None else max(0.0, min(available, float(requested_s)))


__all__ = ["DatabaseKey", "TunedBuild", "TuningDatabase", "job_budget", "open_database", "tune_and_build"]
