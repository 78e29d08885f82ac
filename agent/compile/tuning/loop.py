"""The compile stage with on-device tuning: rule schedules first, MetaSchedule where it pays.

    tune_and_build(mod, target, out_dir, budget_s=600, trials=None, database=db, layout="NHWC")
        -> TunedBuild (build.Built + .tuning, the report for metrics.json's "tuning")

  1. fuse and schedule every kernel by rule (agent.compile.optimize / schedule), as an
     untuned build does, so a kernel that gets no trials still gets a decent schedule
  2. from the database, use the tuned schedule of every workload whose last comparison with
     the rule schedule it won (a recompile with a warm database stops after step 3)
  3. build, and profile that build on this machine: each workload's share of the latency
  4. while the budget lasts: plan the model's trials by share (agent.compile.tuning.plan; the
     last plan for this model is kept when the budget is the same), tune the workloads in
     that order (agent.compile.tuning.search), each merged into the database as it ends; a
     workload whose planned trials the database already holds is not tuned again
  5. per tuned workload, measure the best record against the rule schedule, both built and run
     the same way; keep the faster (the rule schedule on a tie) and record the choice
  6. if any choice changed: build again, check its outputs against step 3's build on the same
     inputs, and time the two builds in turn (profile.race); unless the new build computes the
     same and is no more than MODEL_TOLERANCE slower, keep step 3's build and record the new
     choices as rejected, with the reason. Kernels that win timed alone can lose in the model
     (weights read from memory, not cache; threads); the model is what ships. Export.

Everything is bounded by `budget_s` for this whole call: tuning stops early enough to leave
time for step 5 and 6, estimated from what step 3's build took. No budget and no trials
means no tuning, but steps 1-3 still apply what the database knows (with an empty database,
the rule build is all there is: nothing is profiled). A cross-compiled target
(`linkable` False) cannot be measured here: only step 2 applies. The steps' state lives in
agent.compile.tuning.job.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from agent.compile import build, schedule
from agent.compile.build import Built
from agent.compile.optimize import DEFAULT_LAYOUT
from agent.compile.tuning import plan
from agent.compile.tuning.database import TuningDatabase
from agent.compile.tuning.job import TUNED_RULE, TuningJob
from agent.errors import JobFailure

if TYPE_CHECKING:  # pragma: no cover
    import tvm

log = logging.getLogger(__name__)

OUTPUT_RTOL = OUTPUT_ATOL = 1e-3  # the verification stage's default tolerances
MODEL_TOLERANCE = 0.02  # step 6 keeps new tuned kernels when the model is at most this much slower with them


@dataclasses.dataclass
class TunedBuild(Built):
    tuning: dict[str, Any]          # metrics.json's "tuning"

    @property
    def tuned(self) -> bool:
        return bool(self.tuning.get("tuned_kernels"))


@contextlib.contextmanager
def _translated(doing: str) -> Iterator[None]:
    """TVM's failures as the compile stage reports them (agent.compile.build)."""
    try:
        yield
    except (MemoryError, JobFailure):
        raise
    except Exception as exc:
        raise build._translate(exc, doing) from exc


def tune_and_build(mod: "tvm.IRModule", target: "tvm.target.Target", out_dir: Path, *,
                   budget_s: float | None = None, trials: int | None = None,
                   database: TuningDatabase | None = None, layout: str = DEFAULT_LAYOUT,
                   linkable: bool = True, cores: int | None = None,
                   min_task_trials: int = plan.MIN_TASK_TRIALS,
                   progress: Callable[[str], None] | None = None) -> TunedBuild:
    """See the module docstring.

    budget_s   seconds this call may take in all (tuning, builds, export); None: no limit
    trials     the model's trials in all, those the database holds for its kernels included;
               None: as many as budget_s buys. Neither given: nothing is tuned.
    database   where records come from and go to; None: tune without remembering
    cores      MetaSchedule's worker count (default: the target's num-cores)
    progress   called with a sentence before each kernel is tuned and before the comparisons
    """
    start = time.time()
    deadline = start + budget_s if budget_s is not None else float("inf")
    wants_tuning = linkable and (budget_s is not None or trials is not None) and \
        (budget_s is None or budget_s > 0) and (trials is None or trials > 0)
    job = TuningJob(target, database, deadline, trials, min_task_trials,
                    cores or int(target.attrs.get("num-cores", 1)), progress)
    job.requested = {"budget_s": budget_s, "trials": trials}
    with _translated("optimizing the model"):
        fused = _fuse(mod, target, layout)
        rule_mod, schedule_report = schedule.schedule_module(fused, target)
    schedule_report = {"layout": layout, **schedule_report}
    seconds = {"optimize": time.time() - start}
    try:
        if not wants_tuning and (database is None or database.empty):  # nothing to apply, nothing to tune
            executable = _build(rule_mod, target, seconds)
            return _finish(executable, out_dir, linkable, seconds, schedule_report, rule_mod,
                           job.report(start, "off"))
        with _translated("reading the tuning database"):
            job.load_tasks(fused)
        return _steps(job, rule_mod, schedule_report, out_dir, linkable, wants_tuning, seconds, start)
    finally:
        job.close()


def _fuse(mod: "tvm.IRModule", target: "tvm.target.Target", layout: str) -> "tvm.IRModule":
    from agent.compile import optimize

    return optimize.fuse(mod, target, layout)


def _steps(job: "TuningJob", rule_mod, schedule_report, out_dir, linkable, wants_tuning, seconds, start) -> TunedBuild:
    """Steps 2-6 of the module docstring."""
    from agent.compile.tuning import profile as profiling

    chosen = job.decided_winners()
    current = job.apply(rule_mod, chosen)
    try:
        executable = _build(current, job.target, seconds)
    except JobFailure as failure:
        if not chosen:
            raise
        log.warning("the build with tuned kernels from the database failed (%s); building without them",
                    failure.detail)
        job.reject(set(chosen), f"does not build: {failure.detail}")
        chosen, current = {}, rule_mod
        executable = _build(current, job.target, seconds)
    if not linkable:
        return _finish(executable, out_dir, linkable, seconds, schedule_report, current,
                       job.report(start, "cross-compiled: nothing can be measured here"))
    inputs = profiling.make_inputs(rule_mod)
    with _translated("profiling the model"):
        before = profiling.profile(executable, inputs, set(job.kernel_names))
    job.rank(before)
    job.latency = {"start_ms": before.latency_s * 1e3, "final_ms": before.latency_s * 1e3}
    stopped = "off"
    tune_start = time.time()
    with _translated("tuning the model"):
        if wants_tuning:
            stopped = job.tune_tasks(build_s=seconds["build"])
        job.compare(rule_mod, build_s=seconds["build"])
    seconds["tune"] = time.time() - tune_start
    final_choice = job.decided_winners()
    if set(final_choice) != set(chosen):
        final = job.apply(rule_mod, final_choice)
        try:
            final_executable = _build(final, job.target, seconds)
            with _translated("running the tuned model"):
                mismatch = _mismatch(profiling.outputs(final_executable, inputs), before.outputs)
            if mismatch is None:
                with _translated("timing the tuned model against the untuned"):
                    old_s, new_s = profiling.race(executable, final_executable, inputs)
                job.latency.update(untuned_ms=old_s * 1e3, tuned_ms=new_s * 1e3)
                if new_s > old_s * (1 + MODEL_TOLERANCE):
                    mismatch = (f"the model ran slower with them: {new_s * 1e3:.3f} ms against "
                                f"{old_s * 1e3:.3f} ms without, timed in turn")
        except JobFailure as failure:  # the untuned build stands; the job goes on with it
            mismatch = f"does not build or run: {failure.detail}"
        if mismatch is None:
            current, executable = final, final_executable
            job.latency["final_ms"] = job.latency["tuned_ms"]
        else:
            log.warning("the tuned build failed its check (%s); keeping the untuned", mismatch)
            job.reject(set(final_choice) - set(chosen), mismatch)
    return _finish(executable, out_dir, linkable, seconds, schedule_report, current, job.report(start, stopped))


def _build(mod: "tvm.IRModule", target: "tvm.target.Target", seconds: dict[str, float]) -> Any:
    started = time.time()
    executable = build.build(mod, target)
    seconds["build"] = seconds.get("build", 0.0) + time.time() - started
    return executable


def _finish(executable, out_dir, linkable, seconds, schedule_report, final_mod, tuning) -> TunedBuild:
    """Export, and the reports as they describe the exported code."""
    started = time.time()
    path = build.export(executable, out_dir, linkable=linkable)
    seconds["export"] = time.time() - started
    funcs = schedule.prim_funcs_by_name(final_mod)
    tuned = sorted(name for name, func in funcs.items()
                   if func.attrs is not None and str(func.attrs.get(schedule.RULE_ATTR, "")) == TUNED_RULE)
    report = dict(schedule_report, tuned=tuned,
                  naive=sorted(name for name, func in funcs.items() if not schedule.has_fast_loops(func)))
    tuning["tuned_kernels"] = tuned
    return TunedBuild(path, seconds, report, tuning)


def _mismatch(actual: list, expected: list) -> str | None:
    from agent.bench import compare

    result = compare(actual, expected, rtol=OUTPUT_RTOL, atol=OUTPUT_ATOL)
    if result["passed"]:
        return None
    return result["error"] or f"max abs error {result['max_abs_error']}"
