"""Where a model's time goes under the rule schedules: each convolution and matmul kernel alone.

    taskset -c 1 env TVM_NUM_THREADS=1 .venv/bin/python benchmarks/kernels.py resnet50 \
        [--top 25] [--out benchmarks/results/kernels-resnet50.md]

The model (a suite model: benchmarks/suite.py's SUITE) is imported and fused as a job does it;
each of its `--top` largest reduction kernels by FLOPs is scheduled by the rule
(agent.compile.schedule.tile_rule, weights packed as a build packs them), built alone and timed
with TVM's time_evaluator: 9 rounds of 2 runs, each round at least 20 ms, the median kept.
GFLOPS come from TIR's FLOP estimate of the kernel, "calls" counts its uses in the model.

One core and one thread (as above) keep the numbers about the kernel, not the machine's other
work: on this 2-core VM a whole-model latency moves by 15 % between runs when anything else
runs, a per-kernel time by far less. The row tile the rule picked is printed
beside each kernel, so a rule change shows where it helped.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROUNDS = 9


def kernels(name: str, models_dir: Path):
    """(target, fused module, {kernel name: calls}) for a suite model."""
    import json

    from agent.compile import onnx_frontend, optimize, target
    from benchmarks.suite import source

    path, input_name, shape, _ = source(name, models_dir)
    imported = onnx_frontend.load_and_import(path, json.dumps({input_name: shape}))
    tvm_target, _ = target.host_target()
    fused = optimize.fuse(imported.mod, tvm_target)
    calls: Counter[str] = Counter()
    import tvm

    for block in fused["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, tvm.relax.Call) and value.args and isinstance(value.args[0], tvm.ir.GlobalVar):
                calls[value.args[0].name_hint] += 1
    return tvm_target, fused, calls


def time_kernel(func, tvm_target) -> tuple[float, str]:
    """Median milliseconds of the rule-scheduled kernel, and the tile the rule chose."""
    import numpy as np
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from agent.compile import schedule

    sch, _ = schedule.tile_rule(func, tvm_target, schedule.vector_lanes(tvm_target))
    mod = tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")})
    args = ms.arg_info.ArgInfo.from_entry_func(mod, remove_preproc=True)
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    library = tvm.compile(mod, target=tvm_target)
    library = getattr(library, "mod", library)
    device = tvm.cpu()
    rng = np.random.default_rng(0)
    arrays = [tvm.runtime.tensor(rng.random([int(d) for d in a.shape]).astype(a.dtype), device) for a in args]
    timer = library.time_evaluator("main", device, number=2, repeat=1, min_repeat_ms=20)
    times = [timer(*arrays).mean for _ in range(ROUNDS)]
    script = sch.mod["main"].script()
    unrolls = re.findall(r"T\.unroll\(T\.int64\((\d+)\)\)", script)
    tile = f"{unrolls[-1] if unrolls else 1} rows"
    if "T.where(" in script:
        tile += ", predicated"
    return statistics.median(times) * 1e3, tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/neo-suite-models"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.models_dir.mkdir(parents=True, exist_ok=True)

    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    from agent.compile import schedule

    tvm_target, fused, calls = kernels(args.model, args.models_dir)
    funcs = schedule.prim_funcs_by_name(fused)
    flops = {}
    for name, func in funcs.items():
        if "conv" in name or "matmul" in name:
            try:
                flops[name] = float(estimate_tir_flops(tvm.IRModule({"main": func})))
            except Exception:  # noqa: BLE001 - a kernel TIR cannot count is left out
                continue
    chosen = sorted(flops, key=lambda n: -flops[n] * calls[n])[:args.top]
    lines = [f"# Kernels of {args.model} under rule {schedule.RULE_VERSION}", "",
             f"`{' '.join(sys.argv)}` (TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', 'unset')}); "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; median of {ROUNDS} rounds.", "",
             "| kernel | calls | ms per call | ms in model | GFLOPS | tile |", "|---|---|---|---|---|---|"]
    total = 0.0
    for name in chosen:
        ms_call, tile = time_kernel(funcs[name], tvm_target)
        total += ms_call * calls[name]
        lines.append(f"| {name} | {calls[name]} | {ms_call:.3f} | {ms_call * calls[name]:.2f} | "
                     f"{flops[name] / ms_call / 1e6:.1f} | {tile} |")
        print(lines[-1], flush=True)
    lines += ["", f"Sum over these kernels, as the model calls them: {total:.1f} ms."]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
