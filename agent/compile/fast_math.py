"""Transcendental functions as vector code: exp, erf, tanh, sigmoid and softmax.

    fast_math(mod) -> mod      before legalization (optimize.fuse calls it)

TVM legalizes relax.exp, erf, tanh and sigmoid to calls of the C library's expf, erff and
tanhf, one element at a time: LLVM cannot vectorize a loop around them. Measured on one core
of this AVX2 machine, BERT-base's GELU (erf over 128x3072) ran at 8 ns an element and took 9 %
of the model, its softmax 4 %; YOLOv8n's 58 SiLU activations (x * sigmoid(x)) made it 1.33x
onnxruntime's latency. onnxruntime computes all of these with vectorized polynomial
approximations (MLAS), and so does this pass, with TVM's own: topi.fast_exp, fast_erf,
fast_tanh and nn.fast_softmax (relax.transform.FastMathTransform's choice), and sigmoid as
1 / (1 + fast_exp(-x)), which FastMathTransform leaves out.

The approximations are within a few float32 ulps over the range that matters (fast_exp clamps
its input to [-88, 88]); every job checks the compiled model against the reference runtime
anyway (agent.bench.verify). Measured (one thread, p50, TVM / onnxruntime, before -> after):
YOLOv8n 1.33 -> 1.05, BERT-base 1.30 -> 1.19, PP-OCRv4 rec 1.09 -> 0.99; the largest output
difference from onnxruntime did not grow.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.compile import rewrite_relax_functions

if TYPE_CHECKING:  # pragma: no cover
    import tvm

log = logging.getLogger(__name__)


def fast_math(mod: "tvm.IRModule") -> "tvm.IRModule":
    """Every Relax function of `mod` with its transcendental calls replaced (see above)."""
    mutator = _mutator()(mod)
    rewritten = rewrite_relax_functions(mod, mutator)
    if mutator.replaced:
        log.debug("fast math: %s", ", ".join(f"{n} {op}" for op, n in sorted(mutator.replaced.items())))
    return rewritten


def _fast_sigmoid(x: Any) -> Any:
    import tvm
    from tvm import te, topi

    one = tvm.tirx.const(1.0, x.dtype)
    exp_neg = topi.fast_exp(te.compute(x.shape, lambda *i: -x(*i), name="negate"))
    return te.compute(x.shape, lambda *i: one / (one + exp_neg(*i)), name="sigmoid")


def _mutator():
    """The mutator class, made on first use: defining it imports TVM."""
    from tvm import relax, topi

    replacements = {
        "relax.exp": lambda bb, call: bb.call_te(topi.fast_exp, call.args[0]),
        "relax.erf": lambda bb, call: bb.call_te(topi.fast_erf, call.args[0]),
        "relax.tanh": lambda bb, call: bb.call_te(topi.fast_tanh, call.args[0]),
        "relax.sigmoid": lambda bb, call: bb.call_te(_fast_sigmoid, call.args[0]),
        "relax.nn.softmax": lambda bb, call: bb.call_te(topi.nn.fast_softmax, call.args[0], call.attrs.axis),
    }

    @relax.expr_functor.mutator
    class FastMath(relax.PyExprMutator):
        def __init__(self, mod: Any):
            super().__init__(mod)
            self.replaced: dict[str, int] = {}

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            name = getattr(call.op, "name", "")
            replace = replacements.get(name)
            if replace is None or str(getattr(call.ty, "dtype", "")) != "float32":
                return call
            self.replaced[name] = self.replaced.get(name, 0) + 1
            return replace(self.builder_, call)

    return FastMath
