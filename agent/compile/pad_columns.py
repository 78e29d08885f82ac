"""Matmuls by a constant weight, padded to whole vector registers of output columns.

    padded_matmul_columns(mod, lanes, tile_vectors) -> mod     after fold_constants (weights are constants)

The tile schedule (agent.compile.schedule) vectorizes a matmul across its output columns N, in
tiles TILE_VECTORS registers wide, and needs a vector width that divides N. A recognizer's
character head divides by none: PP-OCRv4 rec's CTC head has N = 6625, ddddocr's 8210. Its
matmul fell back to vectorizing across rows with strided loads and ran at 4-10 GFLOPS where a
tiled one runs at 50-80 (ddddocr: 127 of its 144 ms). Masked vector loads or TIR padding do not
help: TVM scalarizes predicated vectors.

So such a weight [K, N] gets zero columns now, at compile time, up to N' (the next multiple of
the tile's width); the matmul computes N' columns, whole tiles, and a strided_slice keeps the
first N, which the bias and activation after it read. The extra columns cost (N' - N) / N of the
matmul (0.2 % for N = 6625) and the slice one pass over the output. The values are the same.

A call is rewritten only when it is relax.matmul, its second operand is a 2-D constant with at
least MIN_COLUMNS columns, and no whole register divides N; anything else is left as it is.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.compile import rewrite_relax_functions

if TYPE_CHECKING:  # pragma: no cover
    import tvm

log = logging.getLogger(__name__)

# Narrower heads (a classifier's 2 or 10 classes) are left alone: padding 10 columns to 16
# would waste more than the strided loop loses, and they are a sliver of any model's time.
MIN_COLUMNS = 64


def padded_matmul_columns(mod: "tvm.IRModule", lanes: int, tile_vectors: int) -> "tvm.IRModule":
    """See the module docstring: `lanes` values per vector register, tiles `tile_vectors` wide."""
    from tvm import relax

    mutator = _mutator()(mod, lanes, lanes * tile_vectors)
    rewritten = rewrite_relax_functions(mod, mutator)
    if not mutator.padded:
        return mod
    log.info("matmul output columns padded to whole vector tiles: %s",
             ", ".join(f"{n} -> {padded}" for n, padded in mutator.padded))
    return relax.transform.DeadCodeElimination()(rewritten)


def _mutator():
    """The mutator class, made on first use: defining it imports TVM."""
    import numpy as np
    import tvm
    from tvm import relax

    matmul = tvm.ir.Op.get("relax.matmul")

    @relax.expr_functor.mutator
    class ColumnPadder(relax.PyExprMutator):
        def __init__(self, mod: Any, lanes: int, width: int):
            super().__init__(mod)
            self.lanes, self.width = lanes, width
            self.padded: list[tuple[int, int]] = []  # (N, N') of each call rewritten

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if call.op != matmul or len(call.args) != 2:
                return call
            weight = call.args[1]
            constant = self.lookup_binding(weight) if isinstance(weight, relax.Var) else weight
            if not isinstance(constant, tvm.ir.GenericConst):
                return call
            value = constant.value.numpy()
            columns = value.shape[-1] if value.ndim == 2 else 0
            if columns < MIN_COLUMNS or columns % self.lanes == 0:
                return call
            padded_columns = -(-columns // self.width) * self.width
            padded = np.pad(value, ((0, 0), (0, padded_columns - columns)))
            product = self.builder_.emit(relax.Call(call.op, [call.args[0], relax.const(padded)], call.attrs))
            axis = product.ty.ndim - 1
            self.padded.append((columns, padded_columns))
            return relax.op.strided_slice(product, axes=[axis], begin=[0], end=[columns])

    return ColumnPadder
