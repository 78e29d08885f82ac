"""metrics.json: what a compilation job measured. THIS LAYOUT IS A CONTRACT.

Dashboards, the demo and users' scripts read these keys; add keys freely, never rename or
remove one. The file is uploaded beside the artifact as `<model>-<target>.metrics.json`,
packed inside it as `metrics.json`, and returned in DescribeCompilationJob's record.

    {
      "tvm":         ENGINE,               the compiled model, through agent.runtime
      "onnxruntime": ENGINE,               the user's .onnx on onnxruntime's CPU provider; null when
                                           the model is not ONNX ("onnxruntime_absent" says why)
      "speedup_vs_onnxruntime": float,     onnxruntime p50 / tvm p50 (> 1 means TVM is faster); null
                                           when the model is not ONNX
      "reference":   ENGINE,               the Framework's own runtime on the user's model, the one
                                           verification compares with: onnxruntime (ONNX, then the
                                           same numbers as "onnxruntime"), torch (PYTORCH), litert (TFLITE)
      "speedup_vs_reference": float,       reference p50 / tvm p50
      "verification": {
        "passed": bool, "max_abs_error": float|null, "max_rel_error": float|null,
        "rtol": float, "atol": float,      the tolerances: |tvm - ref| <= atol + rtol * |ref|
        "mismatched": int, "elements": int, "error": str|null,
        "outputs": [{"name", "passed", "max_abs_error", "max_rel_error", ...}, ...]
      },
      "compile_seconds": float,            model load + preparation + import + optimize + build + link
      "compile_breakdown_s": {"load", "fold" (ONNX) | "convert" (PYTORCH), "import", "optimize", "build",
                              "export"[, "tune"]},
      "compile_peak_rss_mb": float,        the compile child's own peak resident memory (VmHWM) at
                                           the compile's end; MetaSchedule's worker processes not counted
      "target": {"kind": "llvm", "mtriple", "mcpu", "num-cores", ["mattr"]},   the TVM target
      "device": {"cpu", "arch", "logical_cores", "physical_cores", "memory_mb", "os", "python"},
      "threads": int,                      intra-op threads given to both engines
      "tuned": bool,                       some kernels run a MetaSchedule schedule tuned on this
                                           device (in this job or an earlier one), not a rule's
      "schedule": {                        how the kernels were scheduled (agent.compile.schedule)
        "layout": "NHWC"|"NCHW",           the convolutions' data layout (CompilerOptions "layout")
        "rule": str,                       the rules' version, e.g. "cpu-tile/1"
        "vector_lanes": int,               float32 lanes per SIMD register the rules assumed
        "functions": int,                  kernels (PrimFuncs) in the model
        "by_kind": {"tiled", "row_reduction", "reduction_parallel", "injective", "parallel",
                    "unscheduled", "already_scheduled": int},
        "unscheduled": [str],              kernels left as TVM made them (every schedule failed)
        "naive": [str],                    kernels with neither a parallel nor a vector loop
        "failures": [{"function", "rule", "error"}]   schedules that failed and were replaced
      },
      "tuning": {                          on-device tuning (agent.compile.tuning)
        "budget": {"seconds", "trials", "source"},   what this job could spend, and who said so
        "stopped": str,                    why tuning ended ("off", "budget", "trials", ...)
        "seconds", "tuning_seconds": float, "trials_measured": int, "seconds_per_trial": float,
        "latency_ms": {"start_ms", "final_ms",    the model profiled before tuning; as shipped
                       "untuned_ms", "tuned_ms"},  with new tuned kernels: both builds timed in turn
                                           (final_ms is then tuned_ms if they were kept)
        "database": {"path", "key", "workloads", "reused"} | null,
        "tasks": [{"kernels", "workload", "share", "trials_planned", "trials_new",
                   "trials_total", "rule_us", "tuned_us", "used", "reused"}],
        "tuned_kernels": [str],
        "shared": {"uri", "pulled_workloads"|"pull_error", "pushed_workloads"|"push_error"}
      },                                   (shared only with tuning.share_uri set)
      "method": {...},                     how latency was measured (BenchConfig and the rules)
      "versions": {"agent", "tvm", "tvm_ffi", "onnx", "onnxruntime", "onnxslim", "numpy", "python",
                   "torch", "tflite", "litert"},   ("not installed" for a package that is not)
      "inputs":  [{"name", "shape", "dtype"}],    the static shapes compiled for
      "outputs": [{"name", "shape", "dtype"}],
      "data_input_config": str,            the shapes as a DataInputConfig; "derived": bool
      "measured": bool,                    false when cross-compiled for another device: then
      "not_measured": str                  says why, and verification, tvm, onnxruntime, reference
                                           and both speedups are null
      "framework": str,                    InputConfig.Framework: ONNX, PYTORCH, TFLITE
      "reference_engine": str,             "onnxruntime", "torch" or "litert"
      "onnxruntime_absent": str            only when the model is not ONNX: why onnxruntime is null
    }

    ENGINE = {
      "latency_ms": {"mean", "p50", "p90", "p95", "p99", "min", "max", "stdev", ...},
      "throughput_per_s": float,           timed iterations / timed seconds (one stream)
      "first_inference_ms": float,         the first run after load, cold caches included
      "peak_rss_mb": float,                the engine's own process, MiB
      "load_ms", "iterations", "duration_s", "warmup_runs", "threads", "version", "engine"
    }

When verification fails the job fails before benchmarking; the metrics gathered so far (with
"verification" and no engine latencies) are still written to the job's folder and carried on
the ClientError as `.metrics`.
"""
from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

LATENCY_KEYS = ("mean", "p50", "p90", "p95", "p99", "min", "max", "stdev")
ENGINE_KEYS = ("latency_ms", "throughput_per_s", "first_inference_ms", "peak_rss_mb")
CONTRACT_KEYS = ("tvm", "onnxruntime", "speedup_vs_onnxruntime", "reference", "speedup_vs_reference",
                 "verification", "compile_seconds", "target", "device", "threads", "tuned", "method", "versions",
                 "inputs", "framework", "reference_engine")
_DISTRIBUTIONS = {"agent": "neo-edge-agent", "tvm": "apache-tvm", "tvm_ffi": "apache-tvm-ffi", "onnx": "onnx",
                  "onnxruntime": "onnxruntime", "onnxslim": "onnxslim", "numpy": "numpy", "torch": "torch",
                  "tflite": "tflite", "litert": "ai-edge-litert"}


def versions() -> dict[str, str]:
    """Installed versions, read from package metadata so nothing heavy is imported."""
    found = {}
    for key, dist in _DISTRIBUTIONS.items():
        try:
            found[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[key] = "not installed"
    found["python"] = platform.python_version()
    return found


def engine_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """One engine's entry from run_engine's result dict (the contract keys first)."""
    out = {key: result.get(key) for key in ENGINE_KEYS}
    for key in ("load_ms", "iterations", "duration_s", "warmup_runs", "threads", "version", "engine"):
        if key in result:
            out[key] = result[key]
    return out


def speedup(tvm: dict[str, Any], reference: dict[str, Any]) -> float | None:
    """reference p50 / tvm p50; None when either has no latency."""
    try:
        return float(reference["latency_ms"]["p50"]) / float(tvm["latency_ms"]["p50"])
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def verification(report: dict[str, Any], output_names: list[str]) -> dict[str, Any]:
    """bench.verify.compare's report with the outputs named."""
    out = dict(report)
    out["outputs"] = [dict(o, name=output_names[o["index"]] if o["index"] < len(output_names) else None)
                      for o in report.get("outputs", [])]
    return out


def method(bench: Any) -> dict[str, Any]:
    """How the numbers were measured, so two metrics files can be compared fairly."""
    return {
        "warmup_runs": bench.warmup_runs,
        "warmup_seconds": bench.warmup_seconds,
        "min_iterations": bench.min_iterations,
        "min_seconds": bench.min_seconds,
        "max_seconds": bench.max_seconds,
        "threads": bench.threads,
        "scenario": "single stream: one inference at a time, each timed on its own",
        "process": "a fresh process per engine, inputs identical for both",
        "reference": "the Framework's own runtime: onnxruntime (ONNX), torch (PYTORCH), LiteRT (TFLITE)",
        "inputs": "random, seed 0: floats uniform in [0, 1), integers in [0, 10)",
    }
