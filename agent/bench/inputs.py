"""Input tensors for verification and benchmarks, and their files.

    make_inputs([{"name": "x", "shape": [1, 3, 224, 224], "dtype": "float32"}], seed=0) -> {"x": array}
    save_npz(path, arrays) / load_npz(path) -> arrays       (input order kept)

Values are drawn so any model can take them: floats uniform in [0, 1), integers 0..9 (small
and non-negative, so embedding tables and index inputs stay in range), bools at random. The same
specs and seed give the same arrays, so both engines, and a rerun, see identical inputs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

INT_HIGH = 10  # integers are drawn from [0, INT_HIGH)
NAMES_KEY = "__names__"


def make_inputs(specs: list[dict], seed: int = 0) -> dict[str, np.ndarray]:
    """One array per spec, in spec order; shapes must be concrete (freeze dynamic dims first)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        name, shape = spec["name"], spec["shape"]
        if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
            raise ValueError(f"input {name!r}: shape {shape} is not concrete; give every dimension a size")
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(d) for d in shape)
        if dtype == np.bool_:
            arrays[name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            arrays[name] = rng.integers(0, INT_HIGH, size=shape).astype(dtype)
        elif np.issubdtype(dtype, np.floating):
            arrays[name] = rng.random(size=shape).astype(dtype)
        else:
            raise ValueError(f"input {name!r}: cannot generate values of dtype {dtype}")
    return arrays


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Save arrays in order. Stored positionally with a name list, so any tensor name
    (with '/', ':' or one that clashes with numpy.savez's own parameters) survives."""
    names = np.array(list(arrays), dtype=str)
    path = Path(path)
    with path.open("wb") as f:  # a file object, so numpy does not append ".npz" to the name
        np.savez(f, *arrays.values(), **{NAMES_KEY: names})
    return path


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays save_npz wrote, in the order it was given them."""
    with np.load(path, allow_pickle=False) as data:
        names = [str(n) for n in data[NAMES_KEY]]
        return {name: data[f"arr_{i}"] for i, name in enumerate(names)}
