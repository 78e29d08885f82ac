"""Latency statistics, computed the way onnxruntime_perf_test computes them.

    summarize([12.1, 11.8, ...]) -> {"count", "mean", "p50", "p90", "p95", "p99",
                                     "min", "max", "stdev", "cov"}    (all in ms except count and cov)

Percentile rule (onnxruntime/test/perftest): sort the samples and take the element at index
floor(n * p), clamped to n - 1. No interpolation, so every reported percentile is a latency that
really happened; p50 of an even count is the upper of the two middle samples.
`stdev` is the population standard deviation (numpy.std's default); `cov` = stdev / mean, the
coefficient of variation trtexec warns about when it is high (0.0 when the mean is 0).
"""
from __future__ import annotations

import math

PERCENTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}


def percentile(sorted_values: list[float], p: float) -> float:
    """The sample at floor(n * p) of an ascending list, clamped to the last one."""
    index = min(int(math.floor(len(sorted_values) * p)), len(sorted_values) - 1)
    return float(sorted_values[index])


def summarize(latencies_ms: list[float]) -> dict:
    """Summary statistics of per-inference latencies; raises ValueError on an empty list."""
    if not latencies_ms:
        raise ValueError("no latencies to summarize")
    values = sorted(float(v) for v in latencies_ms)
    n = len(values)
    mean = math.fsum(values) / n
    stdev = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    summary = {"count": n, "mean": mean}
    summary.update({name: percentile(values, p) for name, p in PERCENTILES.items()})
    summary.update({"min": values[0], "max": values[-1], "stdev": stdev, "cov": stdev / mean if mean else 0.0})
    return summary
