"""The rule build of each suite model beside onnxruntime on one core, timed in turn.

    taskset -c 1 .venv/bin/python benchmarks/one_core.py [--models a,b] [--rounds 15] \
        [--out benchmarks/results/one_core.md]

Each model is compiled as a job compiles it with no tuning (agent.compile: import, fuse, rule
schedules, packed weights), and run in this process beside an onnxruntime session, both with
one thread: a warm-up, then `--rounds` rounds of one inference each, the engines alternating
within every round, the median kept. One core and alternation make this the steadiest
comparison this 2-core VM allows, and the one to use when a compiler change is judged: the
suite's jobs (benchmarks/suite.py) run both engines on 2 threads, where TVM's thread pool and
the machine's other work add their own noise. The ratios here are not the suite's: what
onnxruntime gains from its second thread and TVM from its own differ.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["TVM_NUM_THREADS"] = "1"  # read when TVM's thread pool starts


def measure(name: str, models_dir: Path, rounds: int) -> dict:
    import numpy as np
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from agent.compile import build, onnx_frontend, optimize, target
    from benchmarks.suite import source

    path, input_name, shape, _ = source(name, models_dir)
    started = time.perf_counter()
    imported = onnx_frontend.load_and_import(path, json.dumps({input_name: shape}))
    tvm_target, _ = target.host_target()
    scheduled, _ = optimize.optimize(imported.mod, tvm_target)
    vm = relax.VirtualMachine(build.build(scheduled, tvm_target), tvm.cpu())
    compile_s = time.perf_counter() - started
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    args = [tvm.runtime.tensor(x)]
    engines = {"onnxruntime": lambda: session.run(None, {input_name: x}), "tvm": lambda: vm["main"](*args)}
    times: dict[str, list[float]] = {k: [] for k in engines}
    for run in engines.values():
        for _ in range(3):
            run()
    for _ in range(rounds):
        for engine, run in engines.items():
            start = time.perf_counter()
            run()
            times[engine].append((time.perf_counter() - start) * 1e3)
    p50 = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "shape": shape, "compile_s": round(compile_s, 1), "p50_ms": p50,
            "ratio": p50["tvm"] / p50["onnxruntime"]}


def main() -> None:
    from benchmarks.suite import SUITE, commit, machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SUITE))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/neo-suite-models"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.models_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        rows.append(measure(name, args.models_dir, args.rounds))
        r = rows[-1]
        print(f"{name}: TVM {r['p50_ms']['tvm']:.2f} ms, ORT {r['p50_ms']['onnxruntime']:.2f} ms, "
              f"{r['ratio']:.2f}x", flush=True)
    info = machine()
    lines = ["# One core: the rule build (no tuning) beside onnxruntime", "",
             f"`{' '.join(['python', *sys.argv])}` at {commit()}, "
             f"{datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}  ",
             f"Machine: {info['cpu']}, {info['cores_available']} cores ({platform.machine()}); one thread each, "
             f"pinned as the command says; {args.rounds} rounds, engines alternating, median.", "",
             "| model | input | compile s | TVM p50 ms | ORT p50 ms | TVM / ORT |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {'x'.join(map(str, r['shape']))} | {r['compile_s']:.0f} | "
                     f"{r['p50_ms']['tvm']:.2f} | {r['p50_ms']['onnxruntime']:.2f} | {r['ratio']:.2f}x |")
    geo = math.exp(sum(math.log(r["ratio"]) for r in rows) / len(rows))
    lines += [f"| geometric mean | | | | | **{geo:.2f}x** |", ""]
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
