"""Does the compiled model compute what the reference runtime computes?

    compare(actual, expected, *, rtol, atol) -> report

An element passes when |a - e| <= atol + rtol * |e| (numpy.isclose / allclose's rule, `e` the
reference), NaN in both places counts as a match and NaN in one place as a mismatch; equal
infinities match. An output whose shape or dtype differs from the reference fails outright, as
does a different number of outputs. The report is plain JSON:

    {"passed": bool, "rtol", "atol", "max_abs_error", "max_rel_error",
     "mismatched", "elements", "mismatched_fraction", "error": str | null,
     "outputs": [{"index", "passed", "shape", "expected_shape", "dtype", "expected_dtype",
                  "max_abs_error", "max_rel_error", "mismatched", "elements",
                  "mismatched_fraction", "error"}]}

Errors are measured over elements where neither side is NaN; relative error is
|a - e| / max(|e|, tiny) with tiny the smallest normal float32 (so an exact 0 reference gives a
large, finite number rather than a division by zero). A value that is not finite (an infinite
error) is reported as null, since JSON has no Infinity. Overall figures cover the outputs whose
shapes match.
"""
from __future__ import annotations

import math

import numpy as np

TINY = float(np.finfo(np.float32).tiny)


def compare(actual: list[np.ndarray], expected: list[np.ndarray], *, rtol: float, atol: float) -> dict:
    """Compare outputs pairwise, in order; see the module docstring for the report."""
    outputs = [_compare_one(i, np.asarray(a), np.asarray(e), rtol, atol)
               for i, (a, e) in enumerate(zip(actual, expected))]
    error = None
    if len(actual) != len(expected):
        error = f"the model gave {len(actual)} outputs, the reference {len(expected)}"
    comparable = [o for o in outputs if o["expected_shape"] == o["shape"]]
    mismatched = sum(o["mismatched"] for o in comparable)
    elements = sum(o["elements"] for o in comparable)
    return {
        "passed": error is None and all(o["passed"] for o in outputs),
        "rtol": float(rtol),
        "atol": float(atol),
        "max_abs_error": _max([o["max_abs_error"] for o in comparable]),
        "max_rel_error": _max([o["max_rel_error"] for o in comparable]),
        "mismatched": mismatched,
        "elements": elements,
        "mismatched_fraction": mismatched / elements if elements else 0.0,
        "error": error,
        "outputs": outputs,
    }


def _compare_one(index: int, a: np.ndarray, e: np.ndarray, rtol: float, atol: float) -> dict:
    report = {
        "index": index,
        "passed": False,
        "shape": list(a.shape),
        "expected_shape": list(e.shape),
        "dtype": str(a.dtype),
        "expected_dtype": str(e.dtype),
        "max_abs_error": None,
        "max_rel_error": None,
        "mismatched": int(e.size),
        "elements": int(e.size),
        "mismatched_fraction": 1.0,
        "error": None,
    }
    if a.shape != e.shape:
        report["error"] = f"shape {list(a.shape)} differs from the reference's {list(e.shape)}"
        return report
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    close = np.isclose(a64, e64, rtol=rtol, atol=atol, equal_nan=True)
    mismatched = int(close.size - np.count_nonzero(close))
    both = ~(np.isnan(a64) | np.isnan(e64))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a64[both] - e64[both])
        diff[a64[both] == e64[both]] = 0.0  # inf - inf is NaN, yet equal infinities agree
        rel = diff / np.maximum(np.abs(e64[both]), TINY)
    report.update(
        max_abs_error=_finite(diff.max()) if diff.size else 0.0,
        max_rel_error=_finite(rel.max()) if rel.size else 0.0,
        mismatched=mismatched,
        mismatched_fraction=mismatched / close.size if close.size else 0.0,
    )
    if a.dtype != e.dtype:
        report["error"] = f"dtype {a.dtype} differs from the reference's {e.dtype}"
    else:
        report["passed"] = mismatched == 0
    return report


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _max(values: list) -> float | None:
    """The largest error; None (not finite) beats any number, an empty list gives 0.0."""
    if any(v is None for v in values):
        return None
    return max(values, default=0.0)

