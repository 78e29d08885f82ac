"""One tune_and_build's state and steps 2-5 (see agent.compile.tuning.loop): the tasks and
their database entries, the plan, the searches, the rule-vs-tuned comparisons, the report.

Every result goes into the database as soon as it exists (a job killed later keeps what it
paid for) and into this job's snapshot of it. The job's workloads are marked used when it
loads them and are the last the database's bound evicts while it writes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from agent.compile import schedule
from agent.compile.tuning import plan
from agent.compile.tuning.database import Entry, Snapshot, TuningDatabase, now_iso, record_id
from agent.compile.tuning.profile import RACE_ROUNDS, RACE_RUNS, WARMUP_RUNS

if TYPE_CHECKING:  # pragma: no cover
    import tvm

    from agent.compile.tuning.search import Searcher, Task

log = logging.getLogger(__name__)

TUNED_RULE = "metaschedule"       # RULE_ATTR of a kernel scheduled from a tuning record
SECONDS_PER_TRIAL_GUESS = 3.0     # ppocr-det on a loaded 2-core x86; the database keeps this machine's
TASK_START_S = 5.0                # a task's search set-up before its first candidate
WIN_MARGIN = 0.03                 # a tuned kernel must be 3 % faster than the rule's to be used
REUSE_FRACTION = 0.75             # records for 75 % of the planned trials: not tuned again
REBUILD_FACTOR = 1.5              # the final build and export, as a multiple of step 3's build
COMPARE_S_PER_TASK = 8.0          # step 5, per workload: two builds and 2 x 7 short runs
SAFETY_S = 10.0
COST_SPREAD = 4.0                 # a task's candidates may cost this many times the average
MIN_BATCH = 8                     # below this a search round learns too little to be worth it
PLAN_SLACK = 1.25                 # a budget up to 25 % larger than the last plan's reuses that plan


class TuningJob:
    """The state of one tune_and_build: tasks, the database snapshot, what was measured."""

    def __init__(self, target, database: TuningDatabase | None, deadline: float, trials: int | None,
                 min_task_trials: int, cores: int, progress: Callable[[str], None] | None = None):
        self.target, self.database, self.deadline = target, database, deadline
        self.progress = progress or (lambda message: None)
        self.trials_left = trials
        self.min_task_trials, self.cores = min_task_trials, cores
        self.tasks: dict[str, "Task"] = {}
        self.kernel_names: list[str] = []
        self.entries: dict[str, Entry] = {}
        self.shares: dict[str, float] = {}
        self.rows: dict[str, dict[str, Any]] = {}   # workload -> its line in the report
        self.latency: dict[str, float] = {}
        self.requested: dict[str, Any] = {}
        self.model_plan: dict | None = None
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
        snapshot = self.database.load(using=self.tasks) if self.database else Snapshot()
        self.entries, self.model_plan = snapshot.entries, snapshot.models.get(self.model_id())
        if snapshot.stats.get("seconds_per_trial"):
            self.seconds_per_trial = float(snapshot.stats["seconds_per_trial"])
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
            self.rows[workload]["used"] = "rule"
            if entry and self._choice_valid(entry) and entry.choice.get("winner") == "tuned":
                try:
                    winners[workload] = self._tuned_func(workload)
                except MemoryError:
                    raise
                except Exception as exc:  # a record this TVM cannot replay: the rule schedule stands
                    from agent.compile import summarize_error

                    log.warning("cannot apply the tuning record of %s: %s", self.tasks[workload].kernels[0],
                                summarize_error(exc, 200))
                    continue
                self.rows[workload]["used"] = "tuned"
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
    def _reserve_s(self, build_s: float, planned: "set[str] | dict[str, int]") -> float:
        """Seconds kept after tuning: the final build, and a comparison (step 5) for every
        workload that will hold records with no valid choice: the planned ones and those an
        earlier job left undecided, plus one for the search round that ends past the
        deadline. Whatever step 5 cannot compare, the next job must, so a warm recompile
        that finds nothing to compare is what this reserve buys (suite, 10 minutes: YOLOv8n's
        and PP-OCRv4 rec's warm recompiles took 78 and 74 s comparing what the tuned job had
        planned after it reserved, against 22-45 s for the others)."""
        to_compare = set(planned) | self._undecided_set()
        race_s = 2 * (WARMUP_RUNS + RACE_ROUNDS * RACE_RUNS) * self.latency.get("start_ms", 0.0) / 1e3  # step 6's
        return REBUILD_FACTOR * build_s + COMPARE_S_PER_TASK * (len(to_compare) + 1) + race_s + SAFETY_S

    def _model_trials(self, tune_until: float) -> int:
        """The trials the budget buys this model: the trial limit, or the time until
        `tune_until` at this machine's cost per trial, whichever is less."""
        by_time = (tune_until - time.time()) / self.seconds_per_trial if tune_until < float("inf") else None
        limits = [x for x in (by_time, self.trials_left) if x is not None]
        return int(max(0, min(limits))) if limits else 0

    def model_id(self) -> str:
        """The model as the database knows it: its workloads and how many kernels share each."""
        text = ",".join(f"{w}x{len(t.kernels)}" for w, t in sorted(self.tasks.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _plan(self, tune_until: float) -> tuple[dict[str, int], bool]:
        """(plan, whether it is the last job's). The last plan made for this model is kept if
        its budget was as large (a profile is noisy; a new plan would shift trials between
        similar kernels, and tune again what was tuned); else a new one is made, recorded."""
        window_s = tune_until - time.time()
        old = self.model_plan
        if old and _within(self.requested.get("trials"), old.get("trials")) and \
                _within(window_s if window_s < float("inf") else None, old.get("budget_s")):
            return {w: int(n) for w, n in old.get("planned", {}).items() if w in self.tasks}, True
        planned = plan.allocate(self.shares, self._model_trials(tune_until), self.min_task_trials)
        self._store_plan(planned, window_s)
        return planned, False

    def _store_plan(self, planned: dict[str, int], window_s: float) -> None:
        self.model_plan = {"budget_s": round(window_s, 1) if window_s < float("inf") else None,
                           "trials": self.requested.get("trials"), "planned": planned, "at": now_iso()}
        self._save({}, models={self.model_id(): self.model_plan})

    def tune_tasks(self, build_s: float) -> str:
        """Step 4; returns why it stopped: "planned trials done" or "budget".

        The plan is the model's: trials the whole budget buys, shared by latency, with the
        trials the database already holds for a workload counted as spent. It is recorded
        before tuning starts, so a job killed half-way is continued by the next. When trials
        turn out cheaper than planned for, the time left is planned again; when dearer, what
        was achieved is recorded as the plan. Either way a recompile with the same budget
        finds the plan met and measures nothing; only a budget larger by PLAN_SLACK tunes on."""
        rough = plan.allocate(self.shares, self._model_trials(self.deadline), self.min_task_trials)
        tune_until = self.deadline - self._reserve_s(build_s, rough)
        window_s = tune_until - time.time()
        planned, kept = self._plan(tune_until)
        while True:
            for workload, want in planned.items():
                self.rows[workload]["trials_planned"] = want
            todo = {w: n - self._held(w) for w, n in planned.items() if self._held(w) < REUSE_FRACTION * n}
            for workload in set(planned) - set(todo):  # met by an earlier job's records
                self.rows[workload]["reused"] = self.rows[workload]["trials_new"] == 0
            if not self._tune(todo, tune_until):
                self._store_plan({w: self._held(w) for w in planned if self._held(w)}, window_s)
                return "budget"
            extra = self._affordable(tune_until)
            if kept or not self.trials_measured or extra < self.min_task_trials:
                return "planned trials done"
            more = plan.allocate(self.shares, sum(self._held(w) for w in planned) + extra, self.min_task_trials)
            if all(self._held(w) >= REUSE_FRACTION * n for w, n in more.items()):
                return "planned trials done"
            planned = more
            tune_until = min(tune_until, self.deadline - self._reserve_s(build_s, planned))
            self._store_plan(planned, window_s)

    def _tune(self, todo: dict[str, int], tune_until: float) -> bool:
        """Tune each workload for its trials, in order; False if time ran short."""
        if todo:
            self._searcher_()  # its start-up (seconds to a minute) comes out of the budget first
        for index, (workload, need) in enumerate(todo.items()):
            trials = min(need, self._affordable(tune_until))
            if trials < max(1, min(self.min_task_trials, need) // 2):
                return False
            self.progress(f"tuning {self.tasks[workload].kernels[0]} ({index + 1} of {len(todo)}, "
                          f"{100 * self.shares.get(workload, 0):.0f}% of latency): {trials} trials")
            entry = self.entries.get(workload)
            result = self._searcher_().tune(self.tasks[workload], trials=trials, deadline=tune_until,
                                           seed_records=entry.records if entry else [],
                                           batch=self._batch(tune_until))
            self._record(workload, result, trials)
            if result.stopped_by_deadline:
                return False
        return True

    def _batch(self, tune_until: float) -> int:
        """Candidates per search round for the next task: the deadline is checked between
        rounds, so one round must fit in the time left even if this task's candidates cost
        COST_SPREAD times the average so far. (PP-OCRv4 rec's softmax took 2.1 s a candidate
        where the model's average was 0.5 s: one round of 64 ran 100 s past the deadline and
        left no time to compare what had been tuned.)"""
        from agent.compile.tuning.search import TRIALS_PER_BATCH

        if tune_until == float("inf"):
            return TRIALS_PER_BATCH
        window_s = tune_until - time.time() - TASK_START_S
        return int(max(MIN_BATCH, min(TRIALS_PER_BATCH, window_s / (COST_SPREAD * self.seconds_per_trial))))

    def _held(self, workload: str) -> int:
        entry = self.entries.get(workload)
        return entry.trials if entry else 0

    def _affordable(self, tune_until: float) -> int:
        """Trials that fit before `tune_until`, after a task's start-up, within the trial limit."""
        by_time = (tune_until - time.time() - TASK_START_S) / self.seconds_per_trial \
            if tune_until < float("inf") else 10**7
        return int(max(0, min(by_time, self.trials_left if self.trials_left is not None else 10**7)))

    def _undecided_set(self) -> set[str]:
        return {w for w in self.tasks if w in self.entries and self.entries[w].records
                and not self._choice_valid(self.entries[w])}

    def _searcher_(self) -> "Searcher":
        if self._searcher is None:
            from agent.compile.tuning.search import Searcher

            self._searcher = Searcher(self.target, self.cores)
        return self._searcher

    def _record(self, workload: str, result: Any, asked: int) -> None:
        """A task's outcome into the database. Its trial count grows by what was asked when the
        search ended by itself (a small design space runs out of new candidates: asking
        again would find none either), by what was measured when the deadline ended it."""
        task, row = self.tasks[workload], self.rows[workload]
        self.trials_measured += result.trials
        self.tuning_s += result.seconds
        if self.trials_left is not None:
            self.trials_left -= result.trials
        stats = None
        if self.trials_measured:
            self.seconds_per_trial = self.tuning_s / self.trials_measured
            stats = {"seconds_per_trial": round(self.seconds_per_trial, 3), "at": now_iso()}
        held = self.entries.get(workload)
        spent = result.trials if result.stopped_by_deadline or result.error else max(asked, result.trials)
        entry = Entry(task.kernels[0], task.mod_json, (held.trials if held else 0) + spent,
                      result.records, held.choice if held else None, now_iso())
        self._save({workload: entry}, stats=stats)
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
        if self.deadline < float("inf"):
            left_s = self.deadline - time.time() - REBUILD_FACTOR * build_s - SAFETY_S
            todo = todo[:max(0, int(left_s / COMPARE_S_PER_TASK))]
        if not todo:
            return
        self.progress(f"measuring {len(todo)} tuned kernels against their rule schedules")
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

    def _save(self, entries: dict[str, Entry], *, stats: dict | None = None, models: dict | None = None) -> None:
        """Into the database at once (a job killed later keeps what it paid for), and into
        this job's snapshot. An entry the database's bound had no room for even so (a bound
        smaller than this model's workloads) stays in the snapshot, for this job only."""
        merged = self.database.merge(Snapshot(entries, stats or {}, models or {}), keep=self.tasks).entries \
            if self.database else {}
        self.entries.update({w: merged[w] if w in merged else e.merged(e) for w, e in entries.items()})

    # --- the report --------------------------------------------------------------------------
    def report(self, start: float, stopped: str) -> dict[str, Any]:
        ranked = sorted(self.rows.values(), key=lambda r: -(r["share"] or 0))
        shown = [r for r in ranked if (r["share"] or 0) >= plan.MIN_SHARE or r["trials_total"] or r["used"] == "tuned"]
        return {
            **self.requested,
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


def _within(new: float | None, old: float | None) -> bool:
    """Whether a budget `new` is no larger than `old` was, give or take PLAN_SLACK (None: unlimited)."""
    if old is None:
        return True
    return new is not None and new <= old * PLAN_SLACK


def _us(seconds: float) -> float | None:
    return None if seconds == float("inf") else round(seconds * 1e6, 2)
