"""The compile stage with on-device tuning: rule schedules first, MetaSchedule where it pays.

    tune_and_build(mod, target, out_dir, budget_s=600, trials=None, database=db, layout="NHWC")
        -> TunedBuild (build.Built + .tuning, the report for metrics.json's "tuning")

  1. fuse and schedule every kernel by rule (agent.compile.optimize / schedule), as an
     untuned build does, so a kernel that gets no trials still gets a decent schedule
  2. from the database, use the tuned schedule of every workload whose last comparison with
     the rule schedule it won (a recompile with a warm database stops after step 3)
  3. build, and profile that build on this machine: each workload's share of the latency
  4. while the budget lasts: plan the trials left (agent.compile.tuning.plan), tune the
     workload with the largest share that still needs trials (agent.compile.tuning.search;
     a workload the database already holds its planned trials for is not tuned again), merge
     its records into the database
  5. per tuned workload, measure the best record against the rule schedule, both built and run
     the same way; keep the faster (the rule schedule on a tie) and record the choice
  6. if any choice changed: build again, check its outputs against step 3's build on the same
     inputs (else keep step 3's build and record the new choices as rejected), export

Everything is bounded by `budget_s` for this whole call: tuning stops early enough to leave
time for step 5 and 6, estimated from what step 3's build took. No budget and no trials
means no tuning, but steps 1-3 still apply what the database knows. A cross-compiled target
(`linkable` False) cannot be measured here: only step 2 applies.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from agent.compile import build, schedule
from agent.compile.build import Built
from agent.compile.optimize import DEFAULT_LAYOUT
from agent.compile.tuning import plan
from agent.compile.tuning.database import Entry, TuningDatabase, now_iso, record_id

if TYPE_CHECKING:  # pragma: no cover
    import tvm

    from agent.compile.tuning.search import Searcher, Task

log = logging.getLogger(__name__)

TUNED_RULE = "metaschedule"       # RULE_ATTR of a kernel scheduled from a tuning record
SECONDS_PER_TRIAL_GUESS = 3.0     # ~2.3 s measured under load, plus per-task start-up
WIN_MARGIN = 0.03                 # a tuned kernel must be 3 % faster than the rule's to be used
REUSE_FRACTION = 0.75             # records for 75 % of the planned trials: not tuned again
REBUILD_FACTOR = 1.5              # the final build and export, as a multiple of step 3's build
COMPARE_S_PER_TASK = 8.0          # step 5, per workload: two builds and 2 x 7 short runs
SAFETY_S = 10.0
OUTPUT_RTOL = OUTPUT_ATOL = 1e-3  # the verification stage's default tolerances


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
    except MemoryError:
        raise
    except Exception as exc:
        if isinstance(exc, build.ClientError | build.ServerError):
            raise
        raise build._translate(exc, doing) from exc


def tune_and_build(mod: "tvm.IRModule", target: "tvm.target.Target", out_dir: Path, *,
                   budget_s: float | None = None, trials: int | None = None,
                   database: TuningDatabase | None = None, layout: str = DEFAULT_LAYOUT,
                   linkable: bool = True, cores: int | None = None,
                   min_task_trials: int = plan.MIN_TASK_TRIALS) -> TunedBuild:
    """See the module docstring. `budget_s`: seconds this call may take in all; `trials`: the
    most candidates to measure; `cores`: for MetaSchedule (default: the target's num-cores)."""
    start = time.time()
    deadline = start + budget_s if budget_s is not None else float("inf")
    job = _Job(target, database, deadline, trials, min_task_trials,
               cores or int(target.attrs.get("num-cores", 1)))
    with _translated("optimizing the model"):
        fused = _fuse(mod, target, layout)
        rule_mod, schedule_report = schedule.schedule_module(fused, target)
    seconds = {"optimize": time.time() - start}
    wants_tuning = (budget_s is None or budget_s > 0) and (trials is None or trials > 0) and \
        (budget_s is not None or trials is not None) and linkable
    if database is None and not wants_tuning:
        executable = _build(rule_mod, target, seconds)
        return _finish(executable, out_dir, linkable, seconds, schedule_report, rule_mod, rule_mod,
                       job.report(start, "off"))
    try:
        return _tune_and_build(job, fused, rule_mod, schedule_report, out_dir, linkable, wants_tuning,
                               seconds, start)
    finally:
        job.close()


def _fuse(mod: "tvm.IRModule", target: "tvm.target.Target", layout: str) -> "tvm.IRModule":
    from agent.compile import optimize

    return optimize.fuse(mod, target, layout)


def _tune_and_build(job: "_Job", fused, rule_mod, schedule_report, out_dir, linkable, wants_tuning,
                    seconds, start) -> TunedBuild:
    from agent.compile.tuning import profile as profiling

    with _translated("reading the tuning database"):
        job.load_tasks(fused)
    chosen = job.decided_winners()
    current = job.apply(rule_mod, chosen)
    executable = _build(current, job.target, seconds)
    if not linkable:
        return _finish(executable, out_dir, linkable, seconds, schedule_report, current, rule_mod,
                       job.report(start, "cross-compiled: nothing can be measured here"))
    inputs = profiling.make_inputs(rule_mod)
    with _translated("profiling the model"):
        before = profiling.profile(executable, inputs, set(job.kernel_names))
    job.rank(before)
    job.latency["start_ms"] = before.latency_s * 1e3
    stopped = "off"
    if wants_tuning:
        tune_start = time.time()
        with _translated("tuning the model"):
            stopped = job.tune_tasks(build_s=seconds["build"])
            job.compare(rule_mod, build_s=seconds["build"])
        seconds["tune"] = time.time() - tune_start
    else:
        with _translated("comparing tuned kernels"):
            job.compare(rule_mod, build_s=seconds["build"])
    final_choice = job.decided_winners()
    if set(final_choice) != set(chosen):
        final = job.apply(rule_mod, final_choice)
        final_executable = _build(final, job.target, seconds)
        with _translated("profiling the tuned model"):
            after = profiling.profile(final_executable, inputs, set(job.kernel_names))
        mismatch = _mismatch(after.outputs, before.outputs)
        if mismatch is None:
            current, executable = final, final_executable
            job.latency["final_ms"] = after.latency_s * 1e3
        else:
            log.warning("the tuned build's outputs differ from the untuned one's (%s); keeping the untuned", mismatch)
            job.reject(set(final_choice) - set(chosen), mismatch)
            job.latency["final_ms"] = job.latency["start_ms"]
    else:
        job.latency["final_ms"] = job.latency["start_ms"]
    return _finish(executable, out_dir, linkable, seconds, schedule_report, current, rule_mod,
                   job.report(start, stopped))


def _build(mod: "tvm.IRModule", target: "tvm.target.Target", seconds: dict[str, float]) -> Any:
    started = time.time()
    executable = build.build(mod, target)
    seconds["build"] = seconds.get("build", 0.0) + time.time() - started
    return executable


def _finish(executable, out_dir, linkable, seconds, schedule_report, final_mod, rule_mod, tuning) -> TunedBuild:
    started = time.time()
    path = build.export(executable, out_dir, linkable=linkable)
    seconds["export"] = time.time() - started
    tuned = sorted(name for name, func in schedule.prim_funcs_by_name(final_mod).items()
                   if func.attrs is not None and str(func.attrs.get(schedule.RULE_ATTR, "")) == TUNED_RULE)
    report = dict(schedule_report, tuned=tuned, naive=sorted(
        name for name, func in schedule.prim_funcs_by_name(final_mod).items() if not schedule.has_fast_loops(func)))
    tuning["tuned_kernels"] = tuned
    return TunedBuild(path, seconds, report, tuning)


def _mismatch(actual: list, expected: list) -> str | None:
    from agent.bench import compare

    result = compare(actual, expected, rtol=OUTPUT_RTOL, atol=OUTPUT_ATOL)
    if result["passed"]:
        return None
    return result["error"] or f"max abs error {result['max_abs_error']}"


class _Job:
    """The state of one tune_and_build: tasks, the database snapshot, what was measured."""

    def __init__(self, target, database: TuningDatabase | None, deadline: float, trials: int | None,
                 min_task_trials: int, cores: int):
        self.target, self.database, self.deadline = target, database, deadline
        self.trials_left = trials
        self.min_task_trials, self.cores = min_task_trials, cores
        self.tasks: dict[str, "Task"] = {}
        self.kernel_names: list[str] = []
        self.entries: dict[str, Entry] = {}
        self.shares: dict[str, float] = {}
        self.rows: dict[str, dict[str, Any]] = {}   # workload -> its line in the report
        self.latency: dict[str, float] = {}
        self.trials_measured, self.tuning_s = 0, 0.0
        self.seconds_per_trial = SECONDS_PER_TRIAL_GUESS
        self._searcher: "Searcher | None" = None
        self._scheduled: dict[str, Any] = {}         # workload -> tuned PrimFunc of its best record

    # --- steps 1-3 ---------------------------------------------------------------------------
    def load_tasks(self, fused: "tvm.IRModule") -> None:
        from agent.compile.tuning.search import Task, workload_of

        for name, func in sorted(schedule.prim_funcs_by_name(fused).items()):
            wmod, workload, mod_json = workload_of(func)
            if workload in self.tasks:
                self.tasks[workload].kernels.append(name)
            else:
                self.tasks[workload] = Task(workload, wmod, mod_json, [name])
            self.kernel_names.append(name)
        self.entries = self.database.load() if self.database else {}
        for workload, task in self.tasks.items():
            entry = self.entries.get(workload)
            self.rows[workload] = {"kernels": task.kernels, "workload": workload, "share": None,
                                   "trials_planned": 0, "trials_new": 0,
                                   "trials_total": entry.trials if entry else 0,
                                   "rule_us": None, "tuned_us": None, "used": "rule", "reused": False}
            if entry and entry.choice and self._choice_valid(entry):
                self.rows[workload].update(rule_us=entry.choice.get("rule_us"), tuned_us=entry.choice.get("tuned_us"),
                                           reused=True)

    def _choice_valid(self, entry: Entry) -> bool:
        choice = entry.choice or {}
        return bool(entry.records) and choice.get("rule") == schedule.RULE_VERSION and \
            choice.get("record") == record_id(entry.best())

    def decided_winners(self) -> dict[str, Any]:
        """Workload -> tuned PrimFunc, for every workload whose valid choice is "tuned"."""
        winners = {}
        for workload in self.tasks:
            entry = self.entries.get(workload)
            if entry and self._choice_valid(entry) and entry.choice.get("winner") == "tuned":
                winners[workload] = self._tuned_func(workload)
                self.rows[workload]["used"] = "tuned"
            else:
                self.rows[workload]["used"] = "rule"
        return winners

    def _tuned_func(self, workload: str) -> Any:
        from agent.compile.tuning.search import apply_record

        entry = self.entries[workload]
        key = record_id(entry.best())
        if self._scheduled.get(workload, (None,))[0] != key:
            self._scheduled[workload] = (key, apply_record(self.tasks[workload].mod, entry.best()))
        return self._scheduled[workload][1]

    def apply(self, rule_mod: "tvm.IRModule", winners: dict[str, Any]) -> "tvm.IRModule":
        mod = rule_mod.clone()
        for workload, func in winners.items():
            for name in self.tasks[workload].kernels:
                mod[mod.get_global_var(name)] = func.with_attr(schedule.RULE_ATTR, TUNED_RULE)
        return mod

    def rank(self, profiled: Any) -> None:
        shares = profiled.shares()
        for workload, task in self.tasks.items():
            self.shares[workload] = sum(shares.get(name, 0.0) for name in task.kernels)
            self.rows[workload]["share"] = round(self.shares[workload], 4)

    # --- step 4 ------------------------------------------------------------------------------
    def _reserve_s(self, build_s: float, workloads_to_compare: int) -> float:
        return REBUILD_FACTOR * build_s + COMPARE_S_PER_TASK * workloads_to_compare + SAFETY_S

    def _total_trials(self, tune_until: float) -> int:
        by_time = (tune_until - time.time()) / self.seconds_per_trial
        total = by_time if self.trials_left is None else min(by_time, self.trials_left)
        return int(max(0, min(total, 10**7)))

    def tune_tasks(self, build_s: float) -> str:
        """Step 4; returns why it stopped: "planned trials done", "budget" or "trials"."""
        pending = dict(self.shares)
        tuned = 0
        while pending:
            tune_until = self.deadline - self._reserve_s(build_s, tuned + 1 + self._undecided())
            # plan the trials left among what is left, counting the records already held
            held = {w: self.entries[w].trials if w in self.entries else 0 for w in pending}
            total = self._total_trials(tune_until) + sum(held.values())
            planned = plan.allocate(pending, total, self.min_task_trials)
            if not planned:
                return "budget" if self.trials_left is None or self.trials_left > 0 else "trials"
            workload = next(iter(planned))
            del pending[workload]
            row = self.rows[workload]
            row["trials_planned"] = planned[workload]
            need = planned[workload] - held[workload]
            if held[workload] >= REUSE_FRACTION * planned[workload]:
                row["reused"] = True
                continue
            affordable = self._total_trials(tune_until)
            trials = min(need, affordable)
            if trials < min(self.min_task_trials, need) // 2 or trials < 1:
                return "budget" if affordable < need else "trials"
            result = self._searcher_().tune(self.tasks[workload], trials=trials, deadline=tune_until,
                                           seed_records=self.entries[workload].records if workload in self.entries else [])
            self._record(workload, result)
            tuned += 1
        return "planned trials done"

    def _undecided(self) -> int:
        return sum(1 for w in self.tasks if w in self.entries and self.entries[w].records
                   and not self._choice_valid(self.entries[w]))

    def _searcher_(self) -> "Searcher":
        if self._searcher is None:
            from agent.compile.tuning.search import Searcher

            self._searcher = Searcher(self.target, self.cores)
        return self._searcher

    def _record(self, workload: str, result: Any) -> None:
        task, row = self.tasks[workload], self.rows[workload]
        self.trials_measured += result.trials
        self.tuning_s += result.seconds
        if self.trials_left is not None:
            self.trials_left -= result.trials
        if result.trials:
            self.seconds_per_trial = self.tuning_s / self.trials_measured
        held = self.entries.get(workload)
        entry = Entry(task.kernels[0], task.mod_json, (held.trials if held else 0) + result.trials,
                      result.records, held.choice if held else None)
        merged = self.database.merge({workload: entry}) if self.database else {workload: entry.merged(entry)}
        self.entries[workload] = merged[workload] if not held or not self.database else merged[workload]
        row.update(trials_new=row["trials_new"] + result.trials, trials_total=self.entries[workload].trials,
                   seconds=round(result.seconds, 1), stopped_by_deadline=result.stopped_by_deadline)
        if result.error:
            row["error"] = result.error
        log.info("tuned %s (%.1f%% of latency): %d trials in %.0f s%s", ", ".join(task.kernels),
                 100 * self.shares.get(workload, 0), result.trials, result.seconds,
                 ", stopped at the deadline" if result.stopped_by_deadline else "")

    # --- step 5 ------------------------------------------------------------------------------
    def compare(self, rule_mod: "tvm.IRModule", build_s: float) -> None:
        """Measure each workload with records but no valid choice against its rule schedule."""
        import tvm

        todo = [w for w in sorted(self.tasks, key=lambda w: -self.shares.get(w, 0))
                if w in self.entries and self.entries[w].records and not self._choice_valid(self.entries[w])]
        affordable = int((self.deadline - time.time() - REBUILD_FACTOR * build_s - SAFETY_S) / COMPARE_S_PER_TASK)
        todo = todo[:max(0, affordable)]
        if not todo:
            return
        pairs = []
        for workload in todo:
            rule_func = rule_mod[self.tasks[workload].kernels[0]]
            rule = tvm.IRModule({"main": rule_func.with_attr("global_symbol", "main")})
            tuned = tvm.IRModule({"main": self._tuned_func(workload).with_attr("global_symbol", "main")})
            pairs.append((rule, tuned))
        choices = {}
        for workload, (rule_s, tuned_s) in zip(todo, self._searcher_().compare(pairs)):
            winner = "tuned" if tuned_s < rule_s * (1 - WIN_MARGIN) else "rule"
            entry = self.entries[workload]
            choice = {"rule": schedule.RULE_VERSION, "record": record_id(entry.best()), "winner": winner,
                      "rule_us": _us(rule_s), "tuned_us": _us(tuned_s), "at": now_iso()}
            choices[workload] = dataclasses.replace(entry, choice=choice)
            self.rows[workload].update(rule_us=choice["rule_us"], tuned_us=choice["tuned_us"])
        self._save(choices)

    def reject(self, workloads: set[str], why: str) -> None:
        rejected = {}
        for workload in workloads:
            entry = self.entries[workload]
            rejected[workload] = dataclasses.replace(entry, choice={**entry.choice, "winner": "rule",
                                                                    "rejected": why, "at": now_iso()})
            self.rows[workload]["used"] = "rule"
        self._save(rejected)

    def _save(self, entries: dict[str, Entry]) -> None:
        if self.database:
            merged = self.database.merge(entries)
            self.entries.update({w: merged[w] for w in entries})
        else:
            self.entries.update(entries)

    # --- the report --------------------------------------------------------------------------
    def report(self, start: float, stopped: str) -> dict[str, Any]:
        ranked = sorted(self.rows.values(), key=lambda r: -(r["share"] or 0))
        shown = [r for r in ranked if (r["share"] or 0) >= plan.MIN_SHARE or r["trials_total"] or r["used"] == "tuned"]
        return {
            "stopped": stopped,
            "seconds": round(time.time() - start, 1),
            "tuning_seconds": round(self.tuning_s, 1),
            "trials_measured": self.trials_measured,
            "seconds_per_trial": round(self.seconds_per_trial, 2),
            "latency_ms": {k: round(v, 3) for k, v in self.latency.items()},
            "database": None if self.database is None else {
                "path": str(self.database.path), "key": self.database.key.fields,
                "workloads": len(self.entries),
                "reused": sorted(k for r in self.rows.values() if r["reused"] and r["trials_new"] == 0
                                 for k in r["kernels"])},
            "tasks": shown,
        }

    def close(self) -> None:
        if self._searcher is not None:
            self._searcher.close()


def _us(seconds: float) -> float | None:
    return None if seconds == float("inf") else round(seconds * 1e6, 2)
