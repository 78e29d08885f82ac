"""What a person sees on a terminal: stage progress and the final results table.

Fed by job events (locally) and, later, by the same events arriving over MQTT.
"""
from __future__ import annotations

import sys
from typing import Any, TextIO

from agent.jobs.events import Event


class ProgressPrinter:
    """One line per stage change or status change; percent updates within a stage stay quiet."""

    def __init__(self, stream: TextIO = sys.stdout):
        self.stream = stream
        self._last: tuple[str, str] | None = None

    def __call__(self, event: Event) -> None:
        key = (event.status, event.stage)
        if key == self._last and event.kind != "status":
            return
        self._last = key
        line = f"[{event.percent:5.1f}%] {event.status:<10} {event.stage}"
        if event.failure_reason:
            line += f"  {event.failure_reason}"
        print(line, file=self.stream, flush=True)


def _ms(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def results_table(describe: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    """The final table: job outcome, then TVM beside the reference runtime (onnxruntime, torch or
    litert: metrics.json's "reference_engine"), then verification."""
    lines = [
        f"Compilation job  {describe['CompilationJobName']}",
        f"Status           {describe['CompilationJobStatus']}",
    ]
    if describe.get("FailureReason"):
        lines.append(f"FailureReason    {describe['FailureReason']}")
    artifact = describe.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if artifact:
        lines.append(f"Artifact         {artifact}")
        lines.append(f"ArtifactDigest   {describe.get('ModelDigests', {}).get('ArtifactDigest', '-')}")
    derived = describe.get("DerivedInformation", {}).get("DerivedDataInputConfig")
    if derived:
        lines.append(f"Derived inputs   {derived}")
    if not metrics:
        return "\n".join(lines)
    name = metrics.get("reference_engine") or "onnxruntime"  # metrics from before the key existed
    tvm, ort = metrics.get("tvm") or {}, metrics.get("reference") or metrics.get("onnxruntime") or {}
    lines += ["", f"{'latency (ms)':<22}{'TVM':>12}{name:>14}"]
    for key in ("mean", "p50", "p90", "p95", "p99", "min", "max", "stdev"):
        lines.append(f"  {key:<20}{_ms(tvm.get('latency_ms', {}).get(key)):>12}{_ms(ort.get('latency_ms', {}).get(key)):>14}")
    for label, key in (("throughput (/s)", "throughput_per_s"), ("first inference (ms)", "first_inference_ms"),
                       ("peak RSS (MiB)", "peak_rss_mb")):
        lines.append(f"{label:<22}{_ms(tvm.get(key)):>12}{_ms(ort.get(key)):>14}")
    speedup = metrics.get("speedup_vs_reference", metrics.get("speedup_vs_onnxruntime"))
    if isinstance(speedup, (int, float)) and speedup > 0:
        verdict = "faster" if speedup >= 1 else "slower"
        lines.append(f"speedup vs {name} {speedup:.3f}x (TVM is {max(speedup, 1 / speedup):.1f}x {verdict}, by p50)")
    verification = metrics.get("verification", {})
    if verification:
        lines.append(
            f"verification     {'passed' if verification.get('passed') else 'FAILED'}: "
            f"max abs error {verification.get('max_abs_error', float('nan')):.3g}, "
            f"max rel error {verification.get('max_rel_error', float('nan')):.3g}"
        )
    if "compile_seconds" in metrics:
        lines.append(f"compile time     {metrics['compile_seconds']:.1f} s")
    tuning = metrics.get("tuning")
    if isinstance(tuning, dict):
        lines.append(f"tuning           {tuning_sentence(tuning)}")
    target = metrics.get("target")
    if target:
        lines.append(f"target           {target}")
    if "threads" in metrics:
        lines.append(f"threads          {metrics['threads']}")
    return "\n".join(lines)


def tuning_sentence(tuning: dict[str, Any]) -> str:
    """metrics.json's "tuning" in one line: budget, trials, what was kept, the latency change."""
    budget = tuning.get("budget") or {}
    if not budget.get("seconds"):
        kept = tuning.get("tuned_kernels") or []
        return (f"none ({budget.get('source', 'not asked')})"
                + (f"; {len(kept)} kernels tuned by earlier jobs applied from the database" if kept else ""))
    latency = tuning.get("latency_ms") or {}
    change = (f", profiled {latency['start_ms']:.3f} -> {latency['final_ms']:.3f} ms"
              if latency.get("start_ms") and latency.get("final_ms") else "")
    return (f"{budget['seconds']:g} s budget ({budget.get('source')}): {tuning.get('trials_measured', 0)} trials in "
            f"{tuning.get('tuning_seconds', 0):g} s, {len(tuning.get('tuned_kernels') or [])} kernels use a tuned "
            f"schedule{change}; stopped: {tuning.get('stopped')}")
