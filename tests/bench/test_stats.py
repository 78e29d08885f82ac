"""Latency statistics against numpy, and the onnxruntime_perf_test percentile rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from agent.bench.stats import summarize


def test_against_numpy():
    data = np.random.default_rng(7).lognormal(mean=1.0, sigma=0.3, size=1001)
    s = summarize(list(data))
    ordered = np.sort(data)
    assert s["count"] == 1001
    assert s["mean"] == pytest.approx(np.mean(data), rel=1e-12)
    assert s["stdev"] == pytest.approx(np.std(data), rel=1e-12)
    assert s["cov"] == pytest.approx(np.std(data) / np.mean(data), rel=1e-12)
    assert (s["min"], s["max"]) == (ordered[0], ordered[-1])
    for name, p in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)):
        assert s[name] == ordered[math.floor(1001 * p)]


def test_known_values_use_floor_index_without_interpolation():
    s = summarize([10, 1, 9, 2, 8, 3, 7, 4, 6, 5])  # sorted 1..10
    assert (s["p50"], s["p90"], s["p95"], s["p99"]) == (6.0, 10.0, 10.0, 10.0)
    assert s["mean"] == 5.5


def test_one_sample():
    s = summarize([3.5])
    assert s["p50"] == s["p99"] == s["min"] == s["max"] == 3.5
    assert s["stdev"] == 0.0 and s["cov"] == 0.0


def test_empty_is_an_error():
    with pytest.raises(ValueError):
        summarize([])
