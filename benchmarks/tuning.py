"""On-device tuning of one published model: rule schedules vs tuned vs a warm-database recompile.

    nice .venv/bin/python benchmarks/tuning.py --model ppocr-det --budget 600 [--state DIR]

1. compile with rule schedules only (what an untuned job ships)
2. tune_and_build with a fresh tuning database and `--budget` seconds
3. tune_and_build again with the same budget and the now warm database (a recompile)
4. time onnxruntime and the three builds interleaved in one process (round robin in a
   rotating order, the same input, the same thread count), and check each build's outputs
   against onnxruntime's

Prints and writes (--out, JSON) the numbers with the machine, its load and the command.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.published_models import MODELS, machine, model_path  # noqa: E402


def compile_all(name: str, budget_s: float, state: Path, work: Path, threads: int) -> dict:
    from agent.compile import build, onnx_frontend, target
    from agent.compile.tuning import open_database, tune_and_build

    _, _, input_name, shape = MODELS[name]
    imported = onnx_frontend.load_and_import(model_path(name), json.dumps({input_name: shape}))
    tvm_target, desc = target.host_target()
    database = open_database(state, "benchmark", desc)
    results = {}
    start = time.time()
    built = build.build_and_export(imported.mod, tvm_target, work / "rule")
    results["rule"] = {"compile_s": time.time() - start, "dir": str(work / "rule")}
    for label in ("tuned", "warm"):
        start = time.time()
        tuned = tune_and_build(imported.mod, tvm_target, work / label, budget_s=budget_s, database=database)
        results[label] = {"compile_s": time.time() - start, "dir": str(work / label), "tuning": tuned.tuning,
                          "schedule_tuned": tuned.schedule["tuned"], "naive": tuned.schedule["naive"]}
        print(f"{label}: {results[label]['compile_s']:.1f} s, {tuned.tuning['trials_measured']} trials, "
              f"tuned kernels {tuned.tuning['tuned_kernels']}", flush=True)
    metadata = {"inputs": [s.to_dict() for s in imported.inputs], "outputs": [s.to_dict() for s in imported.outputs],
                "target": desc}
    for label in ("rule", "tuned", "warm"):
        (work / label / "metadata.json").write_text(json.dumps(metadata))
    del built
    return results


def bench(name: str, work: Path, threads: int, rounds: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    from agent import runtime

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(model_path(name)), sess_options=options, providers=["CPUExecutionProvider"])
    _, _, input_name, shape = MODELS[name]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    engines = {"onnxruntime": lambda: session.run(None, {input_name: x})}
    models = {label: runtime.load(work / label) for label in ("rule", "tuned", "warm")}
    for label, model in models.items():
        engines[label] = (lambda m: lambda: m.run({input_name: x}))(model)
    reference = engines["onnxruntime"]()
    errors = {label: max(float(np.max(np.abs(a - b))) for a, b in zip(engines[label](), reference))
              for label in models}
    times = {label: [] for label in engines}
    for _ in range(3):  # warm-up
        for run in engines.values():
            run()
    labels = list(engines)
    for r in range(rounds):  # the order rotates: onnxruntime's threads spin on after a run,
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:  # slowing whatever follows
            begin = time.perf_counter()
            engines[label]()
            times[label].append((time.perf_counter() - begin) * 1e3)
    return {"p50_ms": {k: statistics.median(v) for k, v in times.items()},
            "min_ms": {k: min(v) for k, v in times.items()},
            "max_abs_error": errors, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ppocr-det", choices=sorted(MODELS))
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--state", type=Path, help="tuning database root (default: a fresh temporary one)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tuning.json")
    args = parser.parse_args()
    threads = len(os.sched_getaffinity(0))
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        state = args.state or Path(tmp) / "state"
        compiled = compile_all(args.model, args.budget, state, Path(tmp), threads)
        load_mid = os.getloadavg()
        timing = bench(args.model, Path(tmp), threads, args.rounds)
    result = {"command": "python " + " ".join(sys.argv), "model": args.model, "budget_s": args.budget,
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "machine": machine(),
              "threads": threads, "load_average": {"start": load_start, "before_timing": load_mid,
                                                   "end": os.getloadavg()},
              "compile": compiled, "timing": timing}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    p50, mins = timing["p50_ms"], timing["min_ms"]
    for label in ("onnxruntime", "rule", "tuned", "warm"):
        compile_s = f", compile {compiled[label]['compile_s']:.1f} s" if label in compiled else ""
        ratio = f", {p50[label] / p50['onnxruntime']:.2f}x onnxruntime" if label != "onnxruntime" else ""
        error = f", max abs error {timing['max_abs_error'][label]:.2g}" if label in timing["max_abs_error"] else ""
        print(f"{label:12s} p50 {p50[label]:8.2f} ms (min {mins[label]:.2f}){ratio}{error}{compile_s}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
