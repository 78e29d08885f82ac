"""Generated inputs: ranges, determinism, and npz files that keep order and odd names."""
from __future__ import annotations

import numpy as np
import pytest

from agent.bench.inputs import load_npz, make_inputs, save_npz

SPECS = [
    {"name": "image", "shape": [1, 3, 8, 8], "dtype": "float32"},
    {"name": "ids", "shape": [2, 16], "dtype": "int64"},
    {"name": "mask", "shape": [2, 16], "dtype": "bool"},
    {"name": "half", "shape": [4], "dtype": "float16"},
]


def test_shapes_dtypes_and_ranges():
    arrays = make_inputs(SPECS)
    assert list(arrays) == ["image", "ids", "mask", "half"]
    for spec in SPECS:
        assert arrays[spec["name"]].shape == tuple(spec["shape"])
        assert arrays[spec["name"]].dtype == np.dtype(spec["dtype"])
    assert 0.0 <= arrays["image"].min() and arrays["image"].max() < 1.0
    assert 0 <= arrays["ids"].min() and arrays["ids"].max() <= 9
    assert arrays["mask"].any() and not arrays["mask"].all()


def test_same_seed_same_values():
    a, b, c = make_inputs(SPECS, seed=3), make_inputs(SPECS, seed=3), make_inputs(SPECS, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["image"], c["image"])


@pytest.mark.parametrize("shape", [["batch", 3], [None, 3], [-1, 3]])
def test_dynamic_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="not concrete"):
        make_inputs([{"name": "x", "shape": shape, "dtype": "float32"}])


def test_unsupported_dtype():
    with pytest.raises(ValueError, match="dtype"):
        make_inputs([{"name": "s", "shape": [1], "dtype": "complex64"}])


def test_npz_round_trip_keeps_order_and_names(tmp_path):
    arrays = {"zeta": np.ones(2), "file": np.arange(3), "input:0": np.zeros((1, 2), np.float32),
              "a/b": np.array([True])}
    path = save_npz(tmp_path / "inputs.bin", arrays)
    assert path == tmp_path / "inputs.bin" and path.is_file()
    loaded = load_npz(path)
    assert list(loaded) == list(arrays)
    assert all(np.array_equal(loaded[k], arrays[k]) and loaded[k].dtype == arrays[k].dtype for k in arrays)
