"""Where a built model spends its time, kernel by kernel, measured on this machine.

    profiled = profile(executable, inputs)    -> Profile(kernels {name: s per inference},
                                                 latency_s, outputs)

The Relax VM calls an instrument before and after every call it makes; timing the calls of
the module's PrimFuncs gives each kernel's share of a whole inference, in context (caches,
threads, what ran before it), which is what tuning should be ranked by. The instrument costs
a few microseconds a call, so kernels are timed in their own runs and the end-to-end latency
in plain ones. The inputs are the verification stage's (agent.bench.make_inputs: integers
small, so index inputs stay in range), since the model runs in this process.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import tvm

WARMUP_RUNS = 1
LATENCY_RUNS = 5
KERNEL_RUNS = 3
RACE_ROUNDS = 4   # race(): rounds of the two builds in turn ...
RACE_RUNS = 3     # ... and runs of each per round
INPUT_SEED = 0
# What SplitLayoutRewritePreproc appends to the name of a kernel whose weights it packed
# (agent.compile.optimize.pack_weights); the kernel is still the one tuning knows by name.
PACKED_SUFFIX = "_prepacked"


@dataclasses.dataclass
class Profile:
    kernels: dict[str, float]      # PrimFunc name -> median seconds per inference (all its calls)
    latency_s: float               # median end-to-end seconds, uninstrumented
    outputs: list[np.ndarray]      # of the first run, for comparing two builds

    def shares(self) -> dict[str, float]:
        """Each kernel's fraction of the kernels' total time."""
        total = sum(self.kernels.values()) or 1.0
        return {name: seconds / total for name, seconds in self.kernels.items()}


def input_specs(mod: "tvm.IRModule") -> list[dict[str, Any]]:
    """The `main` function's parameters as agent.bench input specs (static shapes)."""
    specs = []
    for param in mod["main"].params:
        ty = param.ty
        specs.append({"name": param.name, "shape": [int(d) for d in ty.shape.values],
                      "dtype": str(ty.dtype)})
    return specs


def make_inputs(mod: "tvm.IRModule") -> list[np.ndarray]:
    from agent.bench import make_inputs as make

    return list(make(input_specs(mod), seed=INPUT_SEED).values())


def profile(executable: Any, inputs: list[np.ndarray], kernel_names: set[str], *,
            latency_runs: int = LATENCY_RUNS, kernel_runs: int = KERNEL_RUNS) -> Profile:
    """Time `executable` (tvm.compile's result) on `inputs`; `kernel_names` are the PrimFuncs
    to attribute time to (the VM's own builtins are left out)."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in inputs]
    outputs = _numpy(vm["main"](*args))
    for _ in range(WARMUP_RUNS):
        vm["main"](*args)
    latencies = []
    for _ in range(latency_runs):
        start = time.perf_counter()
        vm["main"](*args)
        latencies.append(time.perf_counter() - start)

    per_run: list[dict[str, float]] = []
    started: list[float] = []

    def instrument(func: Any, name: str, before: bool, ret: Any, *call_args: Any) -> int:
        if before:
            started.append(time.perf_counter())
        else:
            elapsed = time.perf_counter() - started.pop()
            name = name.removesuffix(PACKED_SUFFIX)
            if name in kernel_names:
                per_run[-1][name] = per_run[-1].get(name, 0.0) + elapsed
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm.set_instrument(instrument)
    for _ in range(kernel_runs):
        per_run.append({})
        vm["main"](*args)
    names = {name for run in per_run for name in run}
    kernels = {name: statistics.median(run.get(name, 0.0) for run in per_run) for name in names}
    return Profile(kernels, statistics.median(latencies), outputs)


def outputs(executable: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """What `executable` computes from `inputs`, from one run."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable, tvm.cpu())
    return _numpy(vm["main"](*[tvm.runtime.tensor(a) for a in inputs]))


def race(first: Any, second: Any, inputs: list[np.ndarray], *, rounds: int = RACE_ROUNDS,
         runs: int = RACE_RUNS) -> tuple[float, float]:
    """Median end-to-end seconds of two executables of one model on the same inputs, timed in
    turn: `rounds` rounds of `runs` runs each, the order swapped every round, so whatever else
    the machine does in the meantime falls on both alike."""
    import tvm
    from tvm import relax

    mains = [relax.VirtualMachine(executable, tvm.cpu())["main"] for executable in (first, second)]
    args = [tvm.runtime.tensor(a) for a in inputs]
    for main in mains:
        for _ in range(WARMUP_RUNS):
            main(*args)
    times: list[list[float]] = [[], []]
    for round_index in range(rounds):
        for which in ((0, 1) if round_index % 2 == 0 else (1, 0)):
            for _ in range(runs):
                start = time.perf_counter()
                mains[which](*args)
                times[which].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def _numpy(value: Any) -> list[np.ndarray]:
    """The VM's result (a tensor or nested tuples of them) as a flat list of arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    flat: list[np.ndarray] = []
    for item in value:
        flat.extend(_numpy(item))
    return flat
