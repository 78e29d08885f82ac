"""Clip as Relax's own maximum and minimum, so layout conversion and fusion can see it.

    clips_as_relax_ops(mod) -> mod       after the Clip bounds are folded to constants

TVM 0.27's ONNX frontend emits Clip (ReLU6 in MobileNet-style models) as opaque TIR calls,
`call_tir(maximum, (x, low))` and `call_tir(minimum, (.., high))`, made with topi. Relax's
ConvertLayout cannot see what an opaque call does, so in an NHWC build every ReLU6 sat between
a transpose back to NCHW and one to NHWC again: two extra passes over the feature map that the
fusion could not absorb (MobileNetV2: 17 of them). relax.op.maximum and minimum with a scalar
constant are plain elementwise ops that ConvertLayout lays out and FuseOps fuses into the
convolution before them. The values are the same.

A call is rewritten only when its PrimFunc is named maximum*/minimum* (topi's names), computes
T.max / T.min of its two inputs in one block, and its second input is a one-element constant
(the folded bound); anything else is left as it is.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.compile import rewrite_relax_functions

if TYPE_CHECKING:  # pragma: no cover
    import tvm

log = logging.getLogger(__name__)


def clips_as_relax_ops(mod: "tvm.IRModule") -> "tvm.IRModule":
    """See the module docstring."""
    from tvm import relax

    mutator = _mutator()(mod)
    rewritten = rewrite_relax_functions(mod, mutator)
    if not mutator.rewritten:
        return mod
    log.debug("%d clip bounds as relax maximum/minimum", mutator.rewritten)
    return relax.transform.DeadCodeElimination()(rewritten)


def _elementwise_kind(func: Any, name: str) -> str | None:
    """"max" or "min" when `func` is topi's two-input maximum/minimum, else None."""
    import tvm

    kind = "max" if name.startswith("maximum") else "min" if name.startswith("minimum") else None
    if kind is None or not isinstance(func, tvm.tirx.PrimFunc) or len(func.params) != 3:
        return None
    script = func.script()
    blocks = [line for line in script.splitlines() if line.strip().startswith("with T.sblock(")]
    return kind if len(blocks) == 1 and f"T.{kind}(" in script else None


def _mutator():
    """The mutator class, made on first use: defining it imports TVM."""
    import numpy as np
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    ops = {"max": relax.op.maximum, "min": relax.op.minimum}

    @relax.expr_functor.mutator
    class ClipRewriter(relax.PyExprMutator):
        def __init__(self, mod: Any):
            super().__init__(mod)
            self.mod = mod
            self.rewritten = 0

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if call.op != call_tir or not isinstance(call.args[0], tvm.ir.GlobalVar):
                return call
            gvar = call.args[0]
            kind = _elementwise_kind(self.mod[gvar], gvar.name_hint)
            args = list(call.args[1].fields) if isinstance(call.args[1], relax.Tuple) else []
            if kind is None or len(args) != 2:
                return call
            constant = self.lookup_binding(args[1]) if isinstance(args[1], relax.Var) else args[1]
            if not isinstance(constant, tvm.ir.GenericConst):
                return call
            bound = constant.value.numpy()
            if bound.size != 1 or bound.dtype != np.dtype(str(args[0].ty.dtype)):
                return call
            self.rewritten += 1
            return ops[kind](args[0], relax.const(bound.reshape(()), str(bound.dtype)))

    return ClipRewriter
