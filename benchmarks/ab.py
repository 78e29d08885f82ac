"""A compiler change judged on whole models: rule builds from two source trees and onnxruntime, interleaved.

    git worktree add /tmp/wt -b my-change          # the change, beside main
    taskset -c 1 .venv/bin/python benchmarks/ab.py --tree main=. --tree change=/tmp/wt \
        --models resnet50,mobilenetv2 [--rounds 25] [--out benchmarks/results/ab-my-change.md]

Each tree builds each model in its own process (`python -c` with that tree first on sys.path:
import, fuse, rule schedules, packed weights, as a job compiles with no tuning) and exports
model.so. This process then loads every tree's model.so and an onnxruntime session, one
thread each, and times them in turn within every round, the order rotated; a warm-up first.
Reported per model: the median and the 25th percentile of each engine, and each build's ratio to
onnxruntime; the largest output difference between the builds shows they compute the same.

Why this and not two runs of one_core.py: on this 2-core VM a model's latency moves 10-15 %
between processes, for onnxruntime too (docs/research/2026-11-26-memory-traffic.md), which
hides a 5 % change. Interleaved in one process, the machine's drift hits every engine alike.
Timed alone (kernels.py), a kernel finds its weights in cache; inside a model it does not, so
only whole models judge a change to memory traffic.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["TVM_NUM_THREADS"] = "1"  # read when TVM's thread pool starts

BUILD = """
import json, sys
sys.path.insert(0, {tree!r})
from pathlib import Path
from agent.compile import build, onnx_frontend, optimize, schedule, target
from benchmarks.suite import source
path, input_name, shape, _ = source({model!r}, Path({models_dir!r}))
imported = onnx_frontend.load_and_import(path, json.dumps({{input_name: shape}}))
tvm_target, _ = target.host_target()
mod, _ = optimize.optimize(imported.mod, tvm_target)
build.export(build.build(mod, tvm_target), Path({out!r}))
print(json.dumps({{"rule": schedule.RULE_VERSION, "input": input_name, "shape": shape, "onnx": str(path)}}))
"""


def build_tree(tree: Path, model: str, models_dir: Path, out: Path) -> dict:
    """Build `model` with `tree`'s agent in a fresh process; its model.so is in `out`."""
    code = BUILD.format(tree=str(tree), model=model, models_dir=str(models_dir), out=str(out))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: building {model} failed:\n{done.stderr[-3000:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info["compile_s"] = time.perf_counter() - started
    return info


def first_output(value):
    while not hasattr(value, "numpy"):
        value = value[0]
    return value.numpy()


def measure(model: str, trees: dict[str, Path], models_dir: Path, rounds: int, work: Path) -> dict:
    import numpy as np
    import onnxruntime as ort
    import tvm
    from tvm import relax

    infos, engines = {}, {}
    for label, tree in trees.items():
        out = work / model / label
        infos[label] = build_tree(tree, model, models_dir, out)
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(out / "model.so")), tvm.cpu())
        engines[label] = vm
        print(f"{model} {label}: built at {infos[label]['rule']} in {infos[label]['compile_s']:.0f} s", flush=True)
    info = next(iter(infos.values()))
    x = np.random.default_rng(0).random(info["shape"], dtype=np.float32)
    arg = tvm.runtime.tensor(x)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(info["onnx"], options, providers=["CPUExecutionProvider"])
    runs = {"onnxruntime": lambda: session.run(None, {info["input"]: x})}
    runs.update({label: (lambda vm=vm: vm["main"](arg)) for label, vm in engines.items()})
    outputs = [first_output(vm["main"](arg)) for vm in engines.values()]
    difference = max(float(np.abs(o - outputs[0]).max()) for o in outputs)
    for run in runs.values():
        for _ in range(3):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for index in range(rounds):
        for name in order[index % len(order):] + order[:index % len(order)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    p50 = {name: statistics.median(t) for name, t in times.items()}
    p25 = {name: sorted(t)[len(t) // 4] for name, t in times.items()}
    return {"model": model, "p50_ms": p50, "p25_ms": p25, "rules": {k: v["rule"] for k, v in infos.items()},
            "max_output_difference": difference}


def main() -> None:
    from benchmarks.suite import SUITE, commit, machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, metavar="LABEL=PATH",
                        help="a source tree to build with (twice or more)")
    parser.add_argument("--models", default=",".join(SUITE))
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/neo-suite-models"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    trees = {}
    for item in args.tree:
        label, _, path = item.partition("=")
        if not path or not (Path(path) / "agent").is_dir():
            parser.error(f"--tree {item}: expected LABEL=PATH of a checkout with agent/")
        trees[label] = Path(path).resolve()
    args.models_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="neo-ab-") as work:
        for model in args.models.split(","):
            rows.append(measure(model, trees, args.models_dir, args.rounds, Path(work)))
            r = rows[-1]
            print(model, "  ".join(f"{k} {v:.2f} ms ({v / r['p50_ms']['onnxruntime']:.2f}x)"
                                   for k, v in r["p50_ms"].items()), flush=True)
    info = machine()
    labels = list(trees)
    lines = ["# A/B: rule builds from two source trees beside onnxruntime, one core, interleaved", "",
             f"`{' '.join(['python', *sys.argv])}` at {commit()}, "
             f"{datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}  ",
             "Trees: " + ", ".join(f"{label} = `{path}`" for label, path in trees.items()) + "  ",
             f"Machine: {info['cpu']}, {info['cores_available']} cores ({platform.machine()}); one thread each; "
             f"{args.rounds} rounds, order rotated; median (25th percentile).", "",
             "| model | rules | ORT ms | " + " | ".join(f"{label} ms (/ ORT)" for label in labels)
             + " | max output difference |",
             "|---|---|---|" + "---|" * len(labels) + "---|"]
    for r in rows:
        ort_ms = r["p50_ms"]["onnxruntime"]
        cells = [f"{r['p50_ms'][label]:.2f} ({r['p25_ms'][label]:.2f}), {r['p50_ms'][label] / ort_ms:.2f}x"
                 for label in labels]
        lines.append(f"| {r['model']} | {', '.join(sorted(set(r['rules'].values())))} | "
                     f"{ort_ms:.2f} ({r['p25_ms']['onnxruntime']:.2f}) | " + " | ".join(cells)
                     + f" | {r['max_output_difference']:.1e} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
