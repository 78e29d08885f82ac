"""MetaSchedule on this machine, one kernel at a time, within a deadline.

    searcher = Searcher(target, cores)
    result = searcher.tune(task, trials=64, deadline=t, seed_records=[...])  -> TaskResult
    searcher.compare([(rule_mod, tuned_mod), ...])  -> [(rule_s, tuned_s)], measured alike
    searcher.close()

Why not relax_integration.tune_relax: it tunes every task of the module in one call, so a
deadline can only be met by guessing a trial count up front, and the records it writes are
applied by MetaScheduleApplyDatabase, which leaves every function without a record as naive
loops. Here each task is one tune_tasks call with its own database seeded from ours, a
measure callback ends the task when the next batch would overrun the deadline, the builder and
the runner skip the candidates of a round that start after it, and the caller decides per
kernel whether the tuned schedule is used at all.

Three costs of TVM 0.27 that would otherwise dominate a small budget on a small device:
  - `import tvm.s_tir.tensor_intrin` (the first TuneContext does it) parses 248 TVMScript
    functions, each calling inspect.stack(), whose inspect.getmodule scans sys.modules for
    every frame: 40-90 s on a loaded 2-core machine. `import_intrinsics` caches getmodule by
    file name for that import only: ~7 s.
  - LocalBuilder starts a fresh process pool for every batch, and its default build function
    imports tensor_intrin again in each worker (30+ s per batch here; why the default 30 s
    build timeout "timed out" under load). `_build` is TVM's default build without that
    import; the intrinsics are needed where schedules are made (this process), not to lower them.
  - The evolutionary search evolves its whole population (512) for every round of candidates,
    however few it measures: with rounds of 32 it cost 60 % of a trial's 4.7 s on ppocr-det's
    top kernel. The population is sized to the round (8 per candidate), rounds are TVM's 64.

TVM is imported inside functions; this module is imported by the builder's worker processes
(for `_build`), which must not pay for anything else.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # pragma: no cover
    import tvm

log = logging.getLogger(__name__)

BUILDER_TIMEOUT_S = 120.0  # 30 s (TVM's default) was not enough on a loaded 2-core machine
RUNNER_TIMEOUT_S = 60.0
TRIALS_PER_BATCH = 64      # candidates per search round (TVM's default): the deadline's granularity
POPULATION_PER_TRIAL = 8   # evolutionary search population per candidate of a round ...
POPULATION_RANGE = (64, 512)  # ... within these bounds (512 for 64, TVM's defaults)
COMPARE_REPEATS = 7        # runs of each kernel when the rule and tuned schedules are compared
COMPARE_MIN_REPEAT_MS = 40


@dataclasses.dataclass
class Task:
    """One workload: a PrimFunc as MetaSchedule sees it, and the kernels that share it."""

    workload: str                  # TVM's structural hash (our database's key)
    mod: "tvm.IRModule"            # {"main": the unscheduled PrimFunc}
    mod_json: str                  # the workload as TVM serializes it
    kernels: list[str]             # the module's PrimFuncs with this workload


@dataclasses.dataclass
class TaskResult:
    trials: int                     # candidates measured in this call
    seconds: float
    records: list                   # record_json() of each, fastest first, failures dropped
    stopped_by_deadline: bool = False
    error: str | None = None


def import_intrinsics() -> None:
    """Import tvm.s_tir.tensor_intrin with inspect.getmodule cached by file (see module doc)."""
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    real = inspect.getmodule
    cache: dict[str, Any] = {}

    def getmodule(obj: Any, _filename: str | None = None) -> Any:
        if _filename is None:
            return real(obj, _filename)
        if _filename not in cache:
            cache[_filename] = real(obj, _filename)
        return cache[_filename]

    inspect.getmodule = getmodule
    try:
        importlib.import_module("tvm.s_tir.tensor_intrin")  # registers the intrinsics
    finally:
        inspect.getmodule = real


def workload_of(func: Any) -> tuple["tvm.IRModule", str, str]:
    """(module, structural hash, serialized) of a PrimFunc as a workload. The symbol is always
    "main", so two kernels that differ only by name are one workload."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main").with_attr("tirx.noalias", True)})
    shash, mod_json = ms.database.MemoryDatabase().commit_workload(mod).as_json()
    return mod, str(shash), str(mod_json)


def record_json(record: Any) -> list:
    """A TuningRecord as JSON-ready lists, the form TuningRecord.from_json reads back.

    TuningRecord.as_json() cannot write a trace that holds an IndexMap (the TransformLayout of
    MetaSchedule's RewriteLayout, which packs weights): its converter knows only numbers,
    strings, arrays and maps. The trace reader takes an IndexMap as its JSON graph in a
    string, which is what TVM's own JSON database writes, so that is what this writes.
    """
    import tvm
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.tirx import FloatImm, IndexMap, IntImm
    from tvm_ffi import Array, Map

    def plain(obj: Any) -> Any:
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, (IntImm, FloatImm)):
            return obj.value
        if isinstance(obj, IndexMap):
            return tvm.ir.save_json(obj)
        if isinstance(obj, Array):
            return [plain(item) for item in obj]
        if isinstance(obj, Map):
            return {plain(key): plain(value) for key, value in obj.items()}
        raise TypeError(f"a tuning record holds a {type(obj).__name__}, which has no JSON form here")

    return plain(_ffi_api.TuningRecordAsJSON(record))


def apply_record(wmod: "tvm.IRModule", record: list) -> Any:
    """The PrimFunc a tuning record's trace makes of its workload, marked scheduled (so no
    later pass schedules it again) and without the workload's "main" symbol."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    if "Tensorize" in json.dumps(record[0]):  # its intrinsics must be registered to replay it
        import_intrinsics()
    trace = ms.database.TuningRecord.from_json(record, ms.database.Workload(wmod)).trace
    sch = s_tir.Schedule(wmod)
    trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)


def _build(mod: Any, target: Any, _params: Any) -> Any:
    """TVM's default_build without `import tvm.s_tir.tensor_intrin` (runs in builder workers)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


SKIPPED = "skipped: the tuning deadline had passed"


def _build_until(deadline: float, mod: Any, target: Any, params: Any) -> Any:
    """_build, unless `deadline` has passed (checked in the worker, as each candidate starts)."""
    if time.time() >= deadline:
        raise RuntimeError(SKIPPED)  # not TimeoutError: the pool takes that for its own, and kills the worker
    return _build(mod, target, params)


def _bounded_builder() -> type:
    """LocalBuilder whose candidates are not built once the deadline set by `bound` has passed.

    The deadline callback ends a task between search rounds only, and a round's cost is known
    only after it: YOLOv8n's fused_conv2d11 took 20 s a candidate where the model's average was
    2.5 s, and its one round ran 160 s past a 600 s job's deadline. With the check in the
    round, a round ends at most one build and one run past it."""
    import functools

    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class BoundedBuilder(ms.builder.LocalBuilder._cls):  # TVM's way to extend a derived object
        def bound(self, deadline: float) -> None:
            self.f_build = _build if deadline == float("inf") else functools.partial(_build_until, deadline)

    return BoundedBuilder


def _bounded_runner() -> type:
    """LocalRunner that measures no candidate once the deadline set by `bound` has passed
    (see _bounded_builder). LocalRunner measures a round's candidates one by one inside `run`,
    so here they are handed to it one at a time."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture

    @derived_object
    class BoundedRunner(ms.runner.LocalRunner._cls):
        deadline = float("inf")

        def bound(self, deadline: float) -> None:
            self.deadline = deadline

        def run(self, runner_inputs: list) -> list:
            futures: list = []
            for runner_input in runner_inputs:
                if time.time() >= self.deadline:
                    futures.append(LocalRunnerFuture(error_message=SKIPPED))
                else:
                    futures.extend(super().run([runner_input]))
            return futures

    return BoundedRunner


@contextlib.contextmanager
def _quiet_metaschedule() -> Iterator[None]:
    """MetaSchedule logs every trial at INFO; the job's log gets one line per task instead."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _agent_importable() -> None:
    """Builder workers unpickle `_build` by reference: they must be able to import the agent."""
    import agent

    root = str(Path(agent.__file__).resolve().parent.parent)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, *paths) if p)


class Searcher:
    """A builder, runners and a cost model shared by the tasks of one job."""

    def __init__(self, target: "tvm.target.Target", cores: int, *, seed: int = 0):
        from tvm.s_tir import meta_schedule as ms

        import_intrinsics()
        _agent_importable()
        self.target, self.cores, self.seed = target, max(1, cores), seed
        with _quiet_metaschedule():
            self.builder = _bounded_builder()(max_workers=self.cores, timeout_sec=BUILDER_TIMEOUT_S, f_build=_build)
            self.runner = _bounded_runner()(timeout_sec=RUNNER_TIMEOUT_S, evaluator_config=ms.runner.EvaluatorConfig(
                number=3, repeat=1, min_repeat_ms=100, enable_cpu_cache_flush=False))
            self.cost_model = ms.cost_model.XGBModel(num_tuning_cores=self.cores, tree_method="auto")
        self._compare_runner = None

    def tune(self, task: Task, *, trials: int, deadline: float, seed_records: list,
             batch: int = TRIALS_PER_BATCH) -> TaskResult:
        """Up to `trials` new candidates for `task`, `batch` at a time, stopping between
        batches at `deadline` (so a batch may end past it: a smaller batch, a smaller overrun)."""
        from tvm.s_tir import meta_schedule as ms

        start = time.time()
        database = ms.database.MemoryDatabase()
        workload = database.commit_workload(task.mod)
        for record in seed_records:  # the search starts from the best known schedules
            database.commit_tuning_record(ms.database.TuningRecord.from_json(record, workload))
        batch = max(1, min(trials, batch))
        population = min(max(POPULATION_PER_TRIAL * batch, POPULATION_RANGE[0]), POPULATION_RANGE[1])
        stopper = _deadline_callback(deadline)
        self.builder.bound(deadline)
        self.runner.bound(deadline)
        error = None
        try:
            with _quiet_metaschedule(), tempfile.TemporaryDirectory(prefix="neo-tune-") as work_dir:
                context = ms.TuneContext(
                    mod=task.mod, target=self.target, space_generator="post-order-apply",
                    search_strategy=ms.search_strategy.EvolutionarySearch(
                        population_size=population, init_min_unmeasured=min(50, population // 4)),
                    task_name=task.kernels[0], num_threads=self.cores, rand_state=self.seed).clone()
                ms.tune.tune_tasks(
                    tasks=[context], task_weights=[1.0], work_dir=work_dir, max_trials_global=trials,
                    max_trials_per_task=trials, num_trials_per_iter=batch,
                    builder=self.builder, runner=self.runner, database=database, cost_model=self.cost_model,
                    measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), stopper],
                    task_scheduler="round-robin")
        except MemoryError:
            raise
        except Exception as exc:  # a search that fails costs its kernel the tuning, not the job
            if not stopper.stopped:
                from agent.compile import summarize_error

                error = summarize_error(exc, 300)
                log.warning("tuning %s failed: %s", task.kernels[0], error)
        finally:
            self.builder.bound(float("inf"))
            self.runner.bound(float("inf"))
        records = [record_json(r) for r in database.get_top_k(workload, len(seed_records) + trials)]
        return TaskResult(stopper.trials, time.time() - start, records, stopper.stopped, error)

    def compare(self, pairs: list[tuple["tvm.IRModule", "tvm.IRModule"]]) -> list[tuple[float, float]]:
        """Median seconds of each (rule, tuned) module pair, built and run the way MetaSchedule
        measured the candidates (own process, random inputs), each pair run in both orders.
        A schedule that fails to build or run measures as infinity."""
        from tvm.s_tir import meta_schedule as ms

        if self._compare_runner is None:
            self._compare_runner = ms.runner.LocalRunner(
                timeout_sec=RUNNER_TIMEOUT_S, evaluator_config=ms.runner.EvaluatorConfig(
                    number=1, repeat=COMPARE_REPEATS, min_repeat_ms=COMPARE_MIN_REPEAT_MS,
                    enable_cpu_cache_flush=False))
        mods = [mod for pair in pairs for mod in pair]
        with _quiet_metaschedule():
            built = self.builder.build([ms.builder.BuilderInput(mod, self.target) for mod in mods])
            args = [ms.arg_info.ArgInfo.from_entry_func(mod, remove_preproc=True) for mod in mods]
            order = [i for p in range(len(pairs)) for i in ((2 * p, 2 * p + 1) if p % 2 else (2 * p + 1, 2 * p))]
            order += list(reversed(order))
            times: dict[int, list[float]] = {i: [] for i in range(len(mods))}
            for i in order:
                if built[i].error_msg:
                    continue
                (future,) = self._compare_runner.run([ms.runner.RunnerInput(built[i].artifact_path, "cpu", args[i])])
                result = future.result()
                if not result.error_msg:
                    times[i].extend(float(s) for s in result.run_secs)
        for i, result in enumerate(built):
            if result.artifact_path:
                with contextlib.suppress(OSError):
                    os.remove(result.artifact_path)
        return [(_median(times[2 * p]), _median(times[2 * p + 1])) for p in range(len(pairs))]

    def close(self) -> None:
        for runner in (self.runner, self._compare_runner):
            pool = getattr(runner, "pool", None)
            if pool is not None:
                with contextlib.suppress(Exception):
                    pool.shutdown()


def _median(values: list[float]) -> float:
    if not values:
        return float("inf")
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


class DeadlineReached(Exception):
    """Raised by the measure callback to end a task (see _deadline_callback)."""


def _deadline_callback(deadline: float):
    """A measure callback that counts candidates and ends the task when another batch, as long
    as the last one took, would end after `deadline`. It ends it by raising: TaskScheduler's
    terminate_task, called from a callback, trips the scheduler's own check that the task it
    picks next is not terminated (the records are in the database already: AddToDatabase
    runs before this callback)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class DeadlineCallback(PyMeasureCallback):
        def __init__(self) -> None:
            self.trials, self.stopped, self.last = 0, False, time.time()

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            now = time.time()
            self.trials += sum(1 for built, ran in zip(builder_results, runner_results)
                               if SKIPPED not in str(built.error_msg or "") + str(ran.error_msg or ""))
            batch_s, self.last = now - self.last, now
            if now + batch_s > deadline:
                self.stopped = True
                raise DeadlineReached(f"the next batch would end after the deadline ({batch_s:.0f} s a batch)")

    return DeadlineCallback()
