"""agent.compile.fast_math: exp, erf, tanh, sigmoid and softmax leave no C library call per
element in the fused kernels, and compute what numpy does to float32 precision."""
from __future__ import annotations

import math

import numpy as np
import pytest

SHAPE = (4, 257)  # not a multiple of any vector width


def model(op: str):
    from tvm import relax

    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            make = {"exp": relax.op.exp, "erf": relax.op.erf, "tanh": relax.op.tanh, "sigmoid": relax.op.sigmoid,
                    "softmax": lambda v: relax.op.nn.softmax(v, axis=-1)}[op]
            out = builder.emit_output(make(x))
        builder.emit_func_output(out)
    return builder.get()


def reference(op: str, x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    if op == "softmax":
        e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    erf = np.vectorize(math.erf)
    return {"exp": np.exp, "erf": erf, "tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[op](x64)


@pytest.mark.parametrize("op", ["exp", "erf", "tanh", "sigmoid", "softmax"])
def test_no_library_call_per_element_and_the_same_values(op):
    import tvm
    from tvm import relax

    from agent.compile import optimize
    from agent.compile.target import host_target

    target = host_target()[0]
    fused = optimize.fuse(model(op), target)
    kernels = "\n".join(f.script() for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    for call in ("T.exp(", "T.erf(", "T.tanh(", "T.sigmoid("):
        assert call not in kernels, f"{op}: {call} left in\n{kernels}"
    scheduled, _ = optimize.optimize(model(op), target)
    vm = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())
    x = np.random.default_rng(1).uniform(-12, 12, SHAPE).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, reference(op, x), rtol=2e-6 if op != "erf" else 1e-5, atol=1e-6)
