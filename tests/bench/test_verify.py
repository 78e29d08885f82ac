"""compare(): allclose's rule, NaN handling, shape/dtype/count mismatches, JSON output."""
from __future__ import annotations

import json

import numpy as np
import pytest

from agent.bench.verify import compare

TOL = {"rtol": 1e-3, "atol": 1e-5}


def check_json(report: dict) -> dict:
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN or Infinity anywhere
    return report


def test_pass_within_tolerance():
    e = np.linspace(-1, 1, 100, dtype=np.float32)
    r = check_json(compare([e * (1 + 5e-4)], [e], **TOL))
    assert r["passed"] and r["mismatched"] == 0 and r["mismatched_fraction"] == 0.0
    assert 0 < r["max_abs_error"] <= 5e-4 + 1e-7
    assert r["max_rel_error"] == pytest.approx(5e-4, rel=1e-2)


def test_boundary_is_allclose_rule():
    e = np.array([2.0])
    edge = e + (1e-5 + 1e-3 * 2.0) * 0.999
    assert compare([edge], [e], **TOL)["passed"] == bool(np.allclose(edge, e, **TOL)) is True
    over = e + (1e-5 + 1e-3 * 2.0) * 1.01
    assert compare([over], [e], **TOL)["passed"] == bool(np.allclose(over, e, **TOL)) is False


def test_fail_counts_and_errors():
    e = np.zeros((2, 5), np.float32)
    a = e.copy()
    a[1, 3] = 0.5
    r = check_json(compare([a, e], [e, e], **TOL))
    assert not r["passed"]
    assert r["mismatched"] == 1 and r["elements"] == 20 and r["mismatched_fraction"] == 0.05
    assert r["max_abs_error"] == 0.5
    assert r["max_rel_error"] > 1e30  # divided by the smallest normal float32, not by zero
    assert [o["passed"] for o in r["outputs"]] == [False, True]
    assert r["outputs"][0]["mismatched_fraction"] == 0.1


def test_nan_in_both_places_matches_nan_in_one_does_not():
    e = np.array([1.0, np.nan, 3.0])
    assert compare([e.copy()], [e], **TOL)["passed"]
    a = np.array([1.0, 2.0, np.nan])
    r = check_json(compare([a], [e], **TOL))
    assert not r["passed"] and r["mismatched"] == 2
    assert r["max_abs_error"] == 0.0  # measured where neither side is NaN


def test_infinities():
    e = np.array([np.inf, 1.0])
    assert compare([e.copy()], [e], **TOL)["passed"]
    r = check_json(compare([np.array([np.inf, np.inf])], [e], **TOL))
    assert not r["passed"] and r["max_abs_error"] is None and r["outputs"][0]["max_abs_error"] is None


def test_shape_mismatch_fails():
    r = check_json(compare([np.zeros((1, 10))], [np.zeros((10,))], **TOL))
    assert not r["passed"]
    out = r["outputs"][0]
    assert "shape [1, 10]" in out["error"] and out["expected_shape"] == [10]
    assert r["elements"] == 0  # overall figures cover only comparable outputs


def test_dtype_mismatch_fails_but_still_measures():
    r = check_json(compare([np.ones(3, np.float64)], [np.ones(3, np.float32)], **TOL))
    assert not r["passed"] and "dtype float64" in r["outputs"][0]["error"]
    assert r["max_abs_error"] == 0.0


def test_output_count_mismatch_fails():
    r = check_json(compare([np.ones(2)], [np.ones(2), np.ones(2)], **TOL))
    assert not r["passed"] and "1 outputs" in r["error"]


def test_integer_and_bool_outputs():
    assert compare([np.array([1, 2], np.int64), np.array([True])],
                   [np.array([1, 2], np.int64), np.array([True])], **TOL)["passed"]
    assert not compare([np.array([False])], [np.array([True])], **TOL)["passed"]
