"""The benchmark/verification worker: one engine, one model, one fresh process.

    python -m agent.bench.worker --engine {onnxruntime,tvm,torch,litert} --model PATH --inputs INPUTS.npz
        --threads N --result RESULT.json [--outputs OUTPUTS.npz] [--bench BENCHCONFIG_JSON]

Started by agent.bench.engines.run_engine; not meant to be run by hand except to debug.
The thread count is put in the environment before the engine is imported. Then:

1. load the model (load_ms) and run the inputs once (first_inference_ms, cold caches included);
2. with --outputs, write that run's outputs, in the model's output order, with save_npz;
3. with --bench, warm up (at least warmup_runs runs and warmup_seconds), then time single
   inferences with perf_counter_ns until both min_iterations and min_seconds are reached, or
   max_seconds has passed, whichever comes first.

RESULT.json, written when the process exits 0:

    {"engine": "tvm", "version": "0.27.0.post1", "threads": 2,
     "load_ms": 12.3, "first_inference_ms": 4.5,
     "latency_ms": {count, mean, p50, p90, p95, p99, min, max, stdev, cov} | null,
     "throughput_per_s": iterations / duration_s | null,
     "iterations": 50, "duration_s": 2.01,      the timed loop's wall time (0 without --bench)
     "warmup_runs": 3,                          warm-up runs actually done
     "peak_rss_mb": 210.4}                      VmHWM of this process at the end, MiB

Any failure is an exception left to Python: a traceback on stderr and exit status 1, which the
parent turns into a ServerError carrying the traceback's tail.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from agent.bench.engines import ENGINES, open_engine, set_threads
from agent.bench.inputs import load_npz, save_npz
from agent.bench.stats import summarize
from agent.config import BenchConfig


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    set_threads(args.threads)  # before any runtime is imported
    result = measure(args.engine, Path(args.model), Path(args.inputs), threads=args.threads,
                     outputs_npz=Path(args.outputs) if args.outputs else None,
                     bench=BenchConfig(**json.loads(args.bench)) if args.bench else None)
    _write_json(Path(args.result), result)
    return 0


def measure(engine_name: str, model_path: Path, inputs_npz: Path, *, threads: int,
            outputs_npz: Path | None, bench: BenchConfig | None) -> dict:
    """Everything the module docstring lists, in this process."""
    feed = load_npz(inputs_npz)
    start = time.perf_counter_ns()
    engine = open_engine(engine_name, model_path, threads)
    load_ms = _ms(time.perf_counter_ns() - start)
    missing = [spec["name"] for spec in engine.inputs if spec["name"] not in feed]
    if missing:
        raise ValueError(f"inputs file {inputs_npz} lacks the model's inputs {missing}; it has {list(feed)}")
    feed = {spec["name"]: feed[spec["name"]] for spec in engine.inputs}

    start = time.perf_counter_ns()
    outputs = engine.run(feed)
    first_ms = _ms(time.perf_counter_ns() - start)
    if outputs_npz is not None:
        names = [spec["name"] for spec in engine.outputs]
        if len(names) != len(outputs) or len(set(names)) != len(names):
            names = [f"output_{i}" for i in range(len(outputs))]
        save_npz(outputs_npz, dict(zip(names, outputs)))

    result = {
        "engine": engine_name, "version": engine.version, "threads": threads,
        "load_ms": load_ms, "first_inference_ms": first_ms,
        "latency_ms": None, "throughput_per_s": None, "iterations": 0, "duration_s": 0.0, "warmup_runs": 0,
    }
    if bench is not None:
        result["warmup_runs"] = _warm_up(engine, feed, bench)
        latencies, duration_s = _timed_loop(engine, feed, bench)
        result.update(latency_ms=summarize(latencies), throughput_per_s=len(latencies) / duration_s,
                      iterations=len(latencies), duration_s=duration_s)
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def _warm_up(engine, feed, bench: BenchConfig) -> int:
    runs, start = 0, time.perf_counter()
    while runs < bench.warmup_runs or time.perf_counter() - start < bench.warmup_seconds:
        engine.run(feed)
        runs += 1
    return runs


def _timed_loop(engine, feed, bench: BenchConfig) -> tuple[list[float], float]:
    """Single inferences back to back (MLPerf's SingleStream), each timed on its own."""
    min_ns, max_ns = bench.min_seconds * 1e9, bench.max_seconds * 1e9
    latencies: list[float] = []
    start = time.perf_counter_ns()
    while True:
        before = time.perf_counter_ns()
        engine.run(feed)
        after = time.perf_counter_ns()
        latencies.append(_ms(after - before))
        elapsed = after - start
        if elapsed >= max_ns or (len(latencies) >= bench.min_iterations and elapsed >= min_ns):
            return latencies, elapsed / 1e9


def _peak_rss_mb() -> float:
    """This process's own high-water RSS.

    On Linux ru_maxrss survives fork and exec, so a worker started by a 300 MiB compile child
    would report at least 300 MiB whatever its engine used; VmHWM belongs to the new address
    space and starts afresh at exec.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _ms(ns: int) -> float:
    return ns / 1e6


def _write_json(path: Path, data: dict) -> None:
    """Write then rename, so the parent never reads half a result."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent.bench.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--engine", required=True, choices=ENGINES)
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--threads", required=True, type=int)
    parser.add_argument("--result", required=True)
    parser.add_argument("--outputs")
    parser.add_argument("--bench", help="BenchConfig fields as JSON")
    return parser


if __name__ == "__main__":
    sys.exit(main())
