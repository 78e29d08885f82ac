"""Compiling a model for this device with Apache TVM 0.27 (Relax).

    datainput       Neo's DataInputConfig: parse, check against the model, derive when absent
    frontends       the Framework table: model files, frontend, reference engine, FrameworkVersion
    onnx_frontend   .onnx -> prepared graph -> Relax IRModule (static shapes), errors translated
    onnx_recurrent  LSTM, GRU and RNN written out step by step for TVM's ONNX frontend
    torch_frontend  TorchScript / torch.export ExportedProgram -> Relax IRModule
    tflite_frontend .tflite (float or integer-quantized) -> Relax IRModule
    target          the TVM target for this host (CompilerOptions mcpu/mattr), device description
    options         CompilerOptions: the keys a request may use (mcpu, mattr, dtype, layout)
    optimize        layout, constant folding, fusion, then a CPU schedule for every kernel
    clip, fast_math, pad_columns
                    graph rewrites optimize runs: Clip as Relax maximum/minimum; exp, erf,
                    tanh, sigmoid and softmax as vectorizable approximations; a matmul's odd
                    output width padded to whole vector tiles
    schedule        the CPU schedule rules and schedule_module (no tuning)
    build           optimize -> VM executable -> model.so

None of these import TVM, onnx, onnxslim, torch or tflite at module level: the agent's main
process may import them for their types, and only the compile child may load the compiler.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import tvm

    from agent.errors import ClientError

_FRAME = re.compile(r"^(Traceback|File |\[bt\]|---|\d+: )")
_ERROR_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception): ")


def summarize_error(exc: BaseException, limit: int = 400) -> str:
    """The line of a foreign error worth showing a user in a FailureReason.

    TVM's messages carry a C++/Python traceback; the useful part is the last `XxxError: ...`
    line when there is one, else the first line that is not a stack frame.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not _FRAME.match(line)]
    errors = [line for line in useful if _ERROR_LINE.match(line)]
    text = errors[-1] if errors else (useful[0] if useful else "")
    return text[:limit] or type(exc).__name__


def operator_error(exc: BaseException, where: str) -> "ClientError | None":
    """TVM's operator errors in Neo's keywords (OperatorNotImplemented and the attribute ones),
    `where` in brackets after TVM's message; None for any other error."""
    import tvm

    from agent.errors import ClientError

    keywords = (
        (tvm.error.OpNotImplemented, "OperatorNotImplemented"),
        (tvm.error.OpAttributeUnImplemented, "OperatorAttributeNotImplemented"),
        (tvm.error.OpAttributeRequired, "OperatorAttributeRequired"),
        (tvm.error.OpAttributeInvalid, "OperatorAttributeValueNotValid"),
        (tvm.error.OpError, "OperatorNotImplemented"),
    )
    for kind, keyword in keywords:
        if isinstance(exc, kind):
            return ClientError(keyword, f"{summarize_error(exc)} ({where})")
    return None


def rewrite_relax_functions(mod: "tvm.IRModule", mutator: Any) -> "tvm.IRModule":
    """Every Relax function of `mod` visited by `mutator` (a relax.PyExprMutator made on `mod`);
    the module its builder holds after, with any PrimFunc the mutator emitted (call_te)."""
    from tvm import relax

    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()
