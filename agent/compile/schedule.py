"""CPU schedules for the fused PrimFuncs of a Relax module, chosen by rule, without tuning.

TVM 0.27 schedules nothing on CPU: after fusion every PrimFunc is a naive loop nest, one
scalar at a time on one core. MetaSchedule can search for schedules but costs minutes per
kernel; these rules get within a few times of onnxruntime in seconds (see
benchmarks/results/). Each PrimFunc gets the first rule whose schedule builds:

    tile       the default rule, by the function's first reduction block:
                 conv / matmul / pool (a reduction whose innermost output axis is wide):
                   a register tile, vectorized across output channels, rows unrolled,
                   accumulators in registers, the epilogue computed on the tile, outer loops
                   parallel                                                 -> "tiled"
                 row reductions (softmax, mean, norm; the innermost output axis is tiny):
                   TVM's own dlight CPU GEMV / Reduction rules                -> "row_reduction"
                 elementwise and layout functions: inner loop vectorized, outer loops
                   parallel                                                 -> "injective"
                 a reduction no loop of which can be vectorized: outer loops parallel
                                                                           -> "reduction_parallel"
    parallel   the safe fallback when a tile schedule fails to build: every block's outer
               output loops parallel, the innermost loop vectorized only when nothing is
               reduced inside it                                            -> "parallel"
    (none)     both failed to build: the function stays as TVM made it      -> "unscheduled"

`schedule_module(mod, target)` applies them to every PrimFunc and returns the module with a
report for metrics.json. Schedules are built before they are kept (a schedule primitive can
succeed and still leave IR that a lowering pass or LLVM refuses): all together, and only if
that fails each on its own, so a bad one costs its function the next rule, not the job.
Failures are named in the report. Whatever kind a function got, the report also lists by
name every function whose final code has neither a parallel nor a vectorized loop ("naive"),
so what stayed slow is never hidden behind a kind.

TVM is imported inside functions, like everywhere in agent.compile.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:  # pragma: no cover
    import tvm
    from tvm import s_tir

log = logging.getLogger(__name__)

# Bump when a rule changes what it produces, so metrics from two versions are not confused.
RULE_VERSION = "cpu-tile/9"  # 2: predicated 4-row tiles on 14x14, 7x7 maps; 3: 8 rows when one vector wide;
# 4: the column loop outermost where weights re-read per row tile would stream from beyond L2;
# 5: depthwise convolutions read their zero padding inline; 6: the epilogue reads the accumulators;
# 7: 2 x 2-position tiles where 4 divides neither side of the map; 8: no epilogue on the tile
# with more instances than the tile has outputs (a channel pad: wrong results before);
# 9: half-register-wide tiles, 12 or 8 rows, where no whole register divides the channels

# SIMD register width by target feature, widest first. target_has_features asks LLVM about
# the target's mtriple/mcpu/mattr, so a CompilerOptions mcpu or mattr counts. LLVM's own
# "vector width" query answers 512 for AVX2-only CPUs, so it is not used.
VECTOR_BITS_BY_FEATURE = (("avx512f", 512), ("avx", 256), ("neon", 128), ("sse2", 128))
DEFAULT_VECTOR_BITS = 128  # every 64-bit CPU the agent runs on has at least this
FLOAT_BITS = 32

# The register tile of a reduction: TILE_VECTORS vectors of output channels wide (two
# independent FMA chains hide FMA latency) and ROW_TILE output positions tall: 4 rows x 2
# vectors = 8 accumulators leave room in 16 vector registers for the broadcast inputs and
# weights. A tile one vector wide (24 or 360 output channels: 16 does not divide them) is 8
# rows tall, for as many accumulators: PP-OCRv4 det's 3x3 convolutions to 24 channels ran 13-35 %
# faster. Where the tile's height divides no output axis (14x14 and 7x7 maps), see _row_tile.
# With 512-bit vectors, 24 channels divide into no whole register: the tile is then half a
# register wide (8 floats: an AVX2 register, with AVX-512's 32 registers to hold them) and
# HALF_TILE_ROWS tall, the first of them that divides an output axis. Before, it fell to
# MIN_TILE_WIDTH: 4 floats by 4 rows. Measured alone (one core): PP-OCRv4 det's 3x3
# convolution from 96 to 24 channels at 120x160 took 27.8 ms at 4 x 4, 14.2 at 8 wide and 4
# rows, 9.1 at 8 rows, 8.3 at 12, 8.5 at 16 (MetaSchedule's best after 30 minutes: 8.3);
# its nine 24-channel kernels 68 -> 22 ms; MobileNetV2's two 24-channel ones 1.19 -> 0.40 ms.
TILE_VECTORS = 2
HALF_TILE_ROWS = (12, 8)
ROW_TILE = 4
ROW_TILE_FALLBACKS = (7, 6, 3, 2)  # rows for outputs too short or odd for ROW_TILE: see _row_tile
SQUARE_SIDE = 2  # a ROW_TILE as 2 x 2 positions where ROW_TILE divides no axis: see _square_tile
MIN_TILE_WIDTH = 4  # narrower than this a vector loop costs more than it saves

# A tile's epilogue (bias, residual add, ReLU, ReLU6: 1-4 FLOPs an element) is computed on the
# tile from its accumulators when it costs at most this; a costlier one (SiLU's polynomial
# exp, 85) stays a pass of its own: on the tile, its constants held in registers across the
# loop nest made YOLOv8n's SiLU convolutions 20-40 % slower. Attached, the cheap ones saved
# MobileNetV2 15 % on one core (one write and one read of every convolution's output).
TILE_EPILOGUE_MAX_FLOPS = 8

# The private cache per core that an operand re-read by every tile is assumed to stay in:
# 256 KiB, the smallest per-core L2 of the CPUs the device profiles name (Jetson Orin's
# Cortex-A78AE; x86 cores have 256 KiB to 2 MiB). See _column_first.
L2_BYTES = 256 * 1024
# A column-first tile runs its column loop in parallel when it has at least this many
# columns, its row tiles otherwise (one 16-channel column of a large weight).
MIN_PARALLEL_COLUMNS = 4

# A reduction whose innermost output axis is shorter than this reduces along rows (softmax
# over the last axis, mean over channels): tiling across outputs would vectorize nothing,
# so dlight's row-reduction rules get it.
ROW_REDUCTION_MAX_INNER = 4

# An elementwise loop longer than this is split so the vector part is a few registers wide
# and the rest joins the parallel loops; a shorter one is vectorized whole.
INJECTIVE_SPLIT_ABOVE = 64
INJECTIVE_VECTORS = (4, 2, 1)  # multiples of the vector width tried for that split

# What TVM raises when a schedule primitive refuses (ScheduleError is a RuntimeError) or an
# FFI check fails; anything else is a bug here and must surface.
SCHEDULE_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)

RULE_ATTR = "neo_agent.schedule_rule"  # on each scheduled PrimFunc: the rule that made it

KINDS = ("tiled", "row_reduction", "reduction_parallel", "injective", "parallel", "unscheduled",
         "already_scheduled")

# A rule: (PrimFunc, target, vector lanes) -> (Schedule, kind), or None when it does not apply.
Rule = Callable[[Any, Any, int], "tuple[s_tir.Schedule, str] | None"]


# --- the target ------------------------------------------------------------------------------
def vector_lanes(target: "tvm.target.Target", dtype_bits: int = FLOAT_BITS) -> int:
    """How many `dtype_bits` values one SIMD register of `target` holds (8 floats for AVX2)."""
    from tvm.target import codegen

    bits = DEFAULT_VECTOR_BITS
    for feature, width in VECTOR_BITS_BY_FEATURE:
        try:
            if codegen.target_has_features(feature, target):
                bits = width
                break
        except SCHEDULE_ERRORS:  # a feature name this target's LLVM backend does not know
            continue
    return max(1, bits // dtype_bits)


# --- small helpers ---------------------------------------------------------------------------
def _extent(sch: "s_tir.Schedule", loop: Any) -> int | None:
    from tvm import tirx

    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _divisor(extent: int | None, choices: Iterable[int]) -> int | None:
    """The first choice that divides `extent` (a tile must not leave a remainder loop)."""
    if extent is None:
        return None
    return next((c for c in choices if c <= extent and extent % c == 0), None)


def _longest(sch: "s_tir.Schedule", loops: list, choices: Iterable[int]) -> int | None:
    """Index of the longest loop whose extent one of `choices` divides, or None."""
    options = [(_extent(sch, loop), i) for i, loop in enumerate(loops) if _divisor(_extent(sch, loop), choices)]
    return max(options)[1] if options else None


def _parallel(sch: "s_tir.Schedule", loops: list) -> bool:
    """One parallel loop over all of `loops` (adjacent, outermost first): fusing them gives
    the thread pool enough iterations to share even when the outermost is the batch of 1."""
    if not loops:
        return False
    sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])
    return True


def _attempt(sch: "s_tir.Schedule", step: Callable[["s_tir.Schedule"], Any]) -> tuple["s_tir.Schedule", Any]:
    """Run `step` on a copy and keep the copy only if every primitive in it succeeded.

    Primitives are atomic, but a step is several of them; a half-done tile (split, not yet
    vectorized or parallel) is valid IR and slower than either alternative.
    """
    trial = sch.copy()
    try:
        return trial, step(trial)
    except SCHEDULE_ERRORS as exc:
        log.debug("schedule step refused: %s", str(exc).strip().splitlines()[-1:] or exc)
        return sch, None


# --- rule: tile ------------------------------------------------------------------------------
def tile_rule(func: Any, target: Any, lanes: int) -> "tuple[s_tir.Schedule, str] | None":
    """The default rule (see the module docstring); None when the function cannot be analysed."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    sch = s_tir.Schedule(func)
    blocks = normalize_prim_func(sch)  # one loop per block iterator, each block its own nest
    if not blocks:
        return None
    first_reduction = next((b for b in blocks if "R" in b.dom_kind()), None)
    if first_reduction is not None and _is_row_reduction(first_reduction):
        scheduled = _dlight_row_reduction(func, target)
        if scheduled is not None:
            return scheduled, "row_reduction"

    reductions = [b for b in blocks if "R" in b.dom_kind()]
    _inline_intermediates(sch, blocks, reductions, lanes)
    # The blocks left besides reductions, named now: tiling adds blocks (accumulators, the
    # reductions' init) that live inside the tile's loops and are scheduled with it.
    others = [name for name in _block_names(sch) if name not in {b.name for b in reductions}]
    attached: set[str] = set()
    tiled = False
    for block in reductions:
        sch, epilogue = _attempt(sch, lambda s: _tile_reduction(s, block, lanes))
        tiled = tiled or epilogue is not None
        if epilogue is None:
            sch, epilogue = _attempt(sch, lambda s: _parallel_reduction(s, block))
        attached.update(epilogue or ())
    for name in others:
        if name not in attached:
            sch, _ = _attempt(sch, lambda s: _injective(s, s.get_sblock(name), lanes))
    if not reductions:
        return sch, "injective"
    if tiled:
        sch, _ = _attempt(sch, _pack_weights)
    return sch, "tiled" if tiled else "reduction_parallel"


def _pack_weights(sch: "s_tir.Schedule") -> bool:
    """Weights laid out in the order the tile reads them: each tile column's weights one
    contiguous panel (a [N, K] matmul weight becomes [N/16, K, 16]; HWIO convolution weights
    [O/16, H, W, I, 16]), instead of one 64-byte run every K floats apart.

    MetaSchedule's RewriteLayout post-processor derives the layout from the loop nest and
    adds a block that rewrites the weights; it acts on the buffers fusion marked
    `layout_free_buffers` (optimize.mark_weights: the model's constants), so only
    weights are packed. The rewriting block is split off and computed at compile time by
    agent.compile.build (SplitLayoutRewritePreproc, FoldConstant): the model ships packed
    weights, and inference never repacks. On a 2-core AVX2 machine it took a 128x768x3072
    matmul from 34 to 84 GFLOPS.
    """
    from tvm.s_tir import meta_schedule as ms

    func = sch.mod["main"]
    if func.attrs is None or not func.attrs.get("layout_free_buffers"):
        return False
    if not ms.postproc.RewriteLayout().apply(sch):
        raise ValueError("RewriteLayout refused the schedule")
    return True


def _is_row_reduction(block: Any) -> bool:
    spatial = [it.dom for it in block.iters if it.kind == "S"]
    return not spatial or not isinstance(spatial[-1], int) or spatial[-1] < ROW_REDUCTION_MAX_INNER


def _dlight_row_reduction(func: Any, target: Any) -> "s_tir.Schedule | None":
    """TVM's CPU rules for GEMV and for softmax/norm-like row reductions, in that order."""
    from tvm.s_tir import dlight

    for rule in (dlight.cpu.GEMV(), dlight.cpu.Reduction()):
        try:
            scheduled = rule.apply(func, target, False)
        except SCHEDULE_ERRORS:
            continue
        if isinstance(scheduled, list):
            scheduled = scheduled[0] if scheduled else None
        if scheduled is not None:
            return scheduled
    return None


def _inline_intermediates(sch: "s_tir.Schedule", blocks: list, reductions: list, lanes: int) -> None:
    """Fold every elementwise intermediate into its consumers so nothing is materialised.

    Zero padding (any block with a condition) stays a stage of its own when a reduction
    reads it as a broadcast scalar (a convolution summing over input channels): inlined, it
    puts a bounds test on every multiply-add of the inner loop and stops it from
    vectorizing. A depthwise convolution reads it along its own vectorized output axis
    (channels in, channels out), so the test costs one select per vector load, and
    inlining saves writing and reading the padded copy of its input, the largest tensors
    of a MobileNet: MobileNetV2 5-7 % faster on one core (see _reads_along_vectors).
    Output blocks cannot be inlined; they are computed on the tile or scheduled as
    injective later. Repeated until nothing changes, since inlining one block can make its
    producer inlinable.
    """
    def keep(block: Any) -> bool:
        if not _has_condition(sch, block.block_rv):
            return False
        written = sch.get(block.block_rv).writes[0].source
        return any(not _reads_along_vectors(sch, reduction, written, lanes) for reduction in reductions)

    candidates = [b.name for b in blocks if b.is_injective() and not keep(b)]
    changed = True
    while changed:
        changed = False
        for name in list(candidates):
            try:
                sch.compute_inline(sch.get_sblock(name))
            except SCHEDULE_ERRORS:
                continue
            candidates.remove(name)
            changed = True


def _reads_along_vectors(sch: "s_tir.Schedule", reduction: Any, buffer: Any, lanes: int) -> bool:
    """Whether `reduction` reads `buffer` (if at all) with its innermost output axis in the
    buffer's last index, that axis whole vectors long (so the tile vectorizes it): a vector
    load, not a broadcast."""
    from tvm.tirx.analysis import undefined_vars

    spatial = [it for it in reduction.iters if it.kind == "S"]
    if not spatial or not isinstance(spatial[-1].dom, int) or spatial[-1].dom % lanes:
        return False
    innermost = spatial[-1].var
    for region in sch.get(reduction.block_rv).reads:
        if region.source.same_as(buffer):
            last = undefined_vars(region.region[-1].min)
            if not any(var.same_as(innermost) for var in last):
                return False
    return True


def _has_condition(sch: "s_tir.Schedule", block_rv: Any) -> bool:
    """Whether the block computes a select/if (as padding does: in bounds ? x : 0)."""
    import tvm

    return bool(tvm.get_global_func("s_tir.schedule.HasIfThenElse")(sch.get(block_rv)))


def _tile_reduction(sch: "s_tir.Schedule", block: Any, lanes: int) -> list[str]:
    """Register-tile one reduction block; returns the epilogue blocks computed on its tile.

    Loop order:  parallel(outer spatial) > tile column > reductions > tile rows (unrolled)
    > tile width (vectorized), or the column loop first where _column_first says so. The
    accumulators (rows x width) live in a local buffer that LLVM keeps in registers; each
    input value is loaded once per tile row and broadcast, and with NHWC/HWIO layouts the
    vectorized output channels read contiguous weights.
    """
    spatial = [it for it in block.iters if it.kind == "S"]
    reduce = [it.loop_rv for it in block.iters if it.kind == "R"]
    if not spatial or not reduce:
        raise ValueError(f"{block.name}: not a reduction over outputs")
    full = [TILE_VECTORS * lanes, lanes]  # whole registers
    half = [lanes // 2] if lanes // 2 > MIN_TILE_WIDTH else []  # a narrower register of the ISA
    inner = spatial[-1]
    strided = False
    width = _divisor(_extent(sch, inner.loop_rv), full + half + [MIN_TILE_WIDTH])
    if width is None:
        # Innermost output axis too short or odd (7, 14, 18): vectorize the longest other
        # output axis instead (a strided but still vector loop), whole registers if possible.
        for widths in (full, [MIN_TILE_WIDTH]):
            index = _longest(sch, [it.loop_rv for it in spatial[:-1]], widths)
            if index is not None:
                break
        else:
            raise ValueError(f"{block.name}: no output axis divisible by a vector width")
        inner = spatial.pop(index)
        spatial.append(inner)
        strided = True
        width = _divisor(_extent(sch, inner.loop_rv), widths)
    column, vector = sch.split(inner.loop_rv, [None, width])
    windowed = not strided and sum((_extent(sch, loop) or 2) > 1 for loop in reduce) > 1
    if width == lanes:
        tall: tuple[int, ...] = (ROW_TILE * TILE_VECTORS,)  # one vector wide: as many accumulators
    elif half and width == half[0]:
        tall = HALF_TILE_ROWS
    else:
        tall = (ROW_TILE,)
    outer, rows = _row_tile(sch, [it.loop_rv for it in spatial[:-1]], windowed=windowed, tall=tall)
    column_first = bool(outer) and _column_first(sch, block, inner.var, outer, column)
    if column_first:
        sch.reorder(column, *outer, *reduce, *rows, vector)
    else:
        sch.reorder(*outer, column, *reduce, *rows, vector)
    tile = outer[-1] if column_first else column  # the innermost loop above the reduction

    accumulate = sch.cache_write(block.block_rv, 0, "local")
    sch.reverse_compute_at(accumulate, tile)
    epilogue = _attach_epilogue(sch, accumulate, tile, max_flops=TILE_EPILOGUE_MAX_FLOPS)
    try:
        # The epilogue reads the accumulators where they are: no write-back of the whole
        # output to read again (refused when something besides the epilogue reads it).
        if not epilogue:
            raise ValueError("no epilogue")
        sch.compute_inline(accumulate)
    except SCHEDULE_ERRORS:
        _vectorize_innermost(sch, accumulate)
    for name in epilogue:
        _vectorize_innermost(sch, sch.get_sblock(name))
    for row in rows:
        sch.unroll(row)
    sch.vectorize(vector)
    if not column_first:
        _parallel(sch, outer or [column])
    elif (_extent(sch, column) or 0) >= MIN_PARALLEL_COLUMNS:
        _parallel(sch, [column])
    else:
        _parallel(sch, outer)  # inside the column loop: a parallel region per column
    sch.decompose_reduction(block.block_rv, reduce[0])
    return epilogue


def _column_first(sch: "s_tir.Schedule", block: Any, column_var: Any, outer: list, column: Any) -> bool:
    """Whether the tile's column loop goes outside its row tiles.

    Row tiles outermost (the default), every row tile reads all of the weights: their whole
    panel set is re-read once per row tile. Columns outermost, each column's weight panel is
    read by all row tiles in a row while it is in cache, and the input is re-read once per
    column instead. A re-read costs nothing while the operand fits the core's cache
    (L2_BYTES) and streams it from L3 or memory when not, so the order taken is the one that
    streams fewer bytes. "Weights" are the operands indexed by the vectorized output axis
    (`column_var`), "input" the others. Measured on ResNet-50 (one core, whole model, beside
    onnxruntime, in context where weights do not stay in L3 between calls): 4-7 % faster; its
    3x3 convolution on 7x7 maps (9 MiB of weights, 14 row tiles) went from 6.7 to 3.8 ms a
    call. Timed alone, repeatedly, the kernels hardly differ, which is why this was missed.
    """
    from tvm.tirx.analysis import undefined_vars

    stmt = sch.get(block.block_rv)
    output = stmt.writes[0].source
    weights = inputs = 0
    for region in stmt.reads:
        if region.source.same_as(output):
            continue
        size = _bytes(region.source)
        if size is None:
            return False
        used = [var for r in region.region for var in undefined_vars(r.min)]
        if any(var.same_as(column_var) for var in used):
            weights += size
        else:
            inputs += size
    if not weights or not inputs:  # a pooling window: nothing is re-read across columns
        return False
    row_tiles = 1
    for loop in outer:
        row_tiles *= _extent(sch, loop) or 1
    columns = _extent(sch, column) or 1
    streamed_row_first = weights * (row_tiles - 1) if weights > L2_BYTES else 0
    streamed_column_first = inputs * (columns - 1) if inputs > L2_BYTES else 0
    return streamed_column_first < streamed_row_first


def _bytes(buffer: Any) -> int | None:
    from tvm import tirx

    size = buffer.dtype.bits // 8
    for dim in buffer.shape:
        if not isinstance(dim, tirx.IntImm):
            return None
        size *= int(dim)
    return size


def _row_tile(sch: "s_tir.Schedule", outer: list, *, windowed: bool,
              tall: tuple[int, ...] = (ROW_TILE,)) -> tuple[list, list]:
    """Split a row tile off the outer output axes; returns (outer loops, [row loop] or []).

    The longest outer axis that ROW_TILE divides gets ROW_TILE rows (a W of 56 or 80). Where
    none does but two axes are even (14x14 maps), the tile is 2 x 2 positions (_square_tile).
    Where neither (7x7 maps), what is best depends on the reduction (measured, one
    core, ResNet-50): a windowed one (a 3x3 convolution) runs twice as fast on ROW_TILE rows
    with a predicated last tile (14 as 4+4+4+2, 7 as 4+3) as on 7-row tiles, which spill
    registers; a 1x1 convolution or a matmul is bound by streaming its weights, once per
    group of rows, and 7-row tiles (half the passes of 4+3) are up to twice as fast there.
    So a windowed reduction takes the predicated tile, any other the longest axis one of
    ROW_TILE_FALLBACKS divides. A `tall` tile (8 rows, one vector wide; 12 or 8, half a
    vector wide) is as tall as the first of `tall` that divides an axis, on the longest such
    axis; where none does, it is a ROW_TILE one. Fusing H x W instead is not possible: the
    accumulator and epilogue regions of a tile of a fused axis are not rectangles.
    """
    index, height = None, ROW_TILE
    for height in tall:
        index = _longest(sch, outer, [height])
        if index is not None:
            break
    if index is None and tall != (ROW_TILE,):
        return _row_tile(sch, outer, windowed=windowed)
    if index is None:
        square = _square_tile(sch, outer)
        if square is not None:
            return square
    if index is None and windowed:
        extents = [(_extent(sch, loop) or 0, i) for i, loop in enumerate(outer)]
        longest = max(extents, default=(0, None))
        index = longest[1] if longest[0] > ROW_TILE else None
    if index is None:
        index = _longest(sch, outer, ROW_TILE_FALLBACKS)
        if index is None:
            return outer, []
        height = _divisor(_extent(sch, outer[index]), ROW_TILE_FALLBACKS)
    outer = list(outer)
    outer[index], row = sch.split(outer[index], [None, height])  # predicated when it leaves a tail
    return outer, [row]


def _square_tile(sch: "s_tir.Schedule", outer: list) -> tuple[list, list] | None:
    """A ROW_TILE of 2 x 2 output positions on two outer axes (H and W) that 2 divides, where
    ROW_TILE divides neither (14x14 and 28x14 maps): as many accumulators as a 4-row tile, no
    predicated tail and no 7-row spill. Its accumulator region is a rectangle, unlike a tile of
    H x W fused. None when fewer than two axes are even."""
    even = [i for i, loop in enumerate(outer) if (_extent(sch, loop) or 0) >= 2 * SQUARE_SIDE
            and (_extent(sch, loop) or 0) % SQUARE_SIDE == 0]
    if len(even) < 2:
        return None
    outer = list(outer)
    rows = []
    for index in even[-2:]:
        outer[index], row = sch.split(outer[index], [None, SQUARE_SIDE])
        rows.append(row)
    return outer, rows


def _attach_epilogue(sch: "s_tir.Schedule", block_rv: Any, loop: Any, max_flops: float | None = None) -> list[str]:
    """Compute the elementwise consumers of a block (a tile's write-back: bias, activation,
    a residual add) on its tile, while the results are still in registers or cache. A
    consumer that is itself a reduction, that reads more than the tile, or that costs more
    than `max_flops` an element, stays a separate stage. So does one with more instances than
    the block has outputs (a channel pad fused into an add: 32 channels out of 16):
    reverse_compute_at would give it only the instances that read the tile, and the others
    would never be computed (face-landmark's pool + pad + add lost half its channels)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    attached = []
    outputs = _elements(sch.get(block_rv).writes[0].source)
    for consumer in sch.get_consumers(block_rv):
        stmt = sch.get(consumer)
        if any(int(iv.iter_type) != 0 for iv in stmt.iter_vars):  # 0: data parallel
            continue
        if outputs is None or _domain(stmt) != outputs:
            continue
        if max_flops is not None and float(estimate_tir_flops(stmt)) > max_flops:
            continue
        try:
            sch.reverse_compute_at(consumer, loop)
        except SCHEDULE_ERRORS:
            continue
        attached.append(stmt.name_hint)
    return attached


def _elements(buffer: Any) -> int | None:
    """How many elements a buffer holds; None when its shape is not constant. Counted from
    the shape, not from _bytes: a bool buffer's elements take less than a byte each."""
    from tvm import tirx

    count = 1
    for dim in buffer.shape:
        if not isinstance(dim, tirx.IntImm):
            return None
        count *= int(dim)
    return count


def _domain(stmt: Any) -> int | None:
    """How many instances a block has (the product of its iterators' extents); None if not constant."""
    from tvm import tirx

    count = 1
    for iv in stmt.iter_vars:
        if not isinstance(iv.dom.extent, tirx.IntImm):
            return None
        count *= int(iv.dom.extent)
    return count


def _vectorize_innermost(sch: "s_tir.Schedule", block_rv: Any) -> None:
    loops = sch.get_loops(block_rv)
    if loops:
        try:
            sch.vectorize(loops[-1])
        except SCHEDULE_ERRORS:
            pass  # stays a scalar loop over a few elements of the tile


def _parallel_reduction(sch: "s_tir.Schedule", block: Any) -> list[str]:
    """A reduction no output axis of which vectorizes: all outputs in parallel, each reduced
    serially, its elementwise consumers computed right after it."""
    spatial = [it.loop_rv for it in block.iters if it.kind == "S"]
    reduce = [it.loop_rv for it in block.iters if it.kind == "R"]
    if not spatial:
        raise ValueError(f"{block.name}: a full reduction has no output loop to parallelize")
    sch.reorder(*spatial, *reduce)
    epilogue = _attach_epilogue(sch, block.block_rv, spatial[-1])
    _parallel(sch, spatial)
    if reduce:
        sch.decompose_reduction(block.block_rv, reduce[0])
    return epilogue


def _injective(sch: "s_tir.Schedule", block_rv: Any, lanes: int) -> bool:
    """Elementwise / layout block: innermost loop vectorized (split when long), the rest
    parallel. False when the block has no loop (a scalar) and nothing was done."""
    loops = sch.get_loops(block_rv)
    if not loops:
        return False
    outer, inner = list(loops[:-1]), loops[-1]
    extent = _extent(sch, inner)
    if extent is not None and extent > INJECTIVE_SPLIT_ABOVE:
        width = _divisor(extent, [lanes * n for n in INJECTIVE_VECTORS] + [MIN_TILE_WIDTH])
        if width is not None:
            rest, vector = sch.split(inner, [None, width])
            sch.vectorize(vector)
            outer.append(rest)
        else:
            outer.append(inner)  # no divisor: a prime-length row stays scalar, but parallel
    elif extent is not None:
        sch.vectorize(inner)
    _parallel(sch, outer)
    return True


def _block_names(sch: "s_tir.Schedule") -> list[str]:
    """The blocks directly under the function's root, in program order."""
    root = sch.get_sblock("root")
    return [sch.get(b).name_hint for b in sch.get_child_blocks(root)]


# --- rule: parallel (the fallback) --------------------------------------------------------------
def parallel_rule(func: Any, target: Any, lanes: int) -> "tuple[s_tir.Schedule, str] | None":
    """The least a function gets: each block's leading output loops run in parallel, and the
    innermost loop is vectorized when nothing is reduced inside it. No inlining, tiling or
    reordering, so there is little for a build to refuse."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    sch = s_tir.Schedule(func)
    blocks = normalize_prim_func(sch)
    if not blocks:
        return None
    changed = False
    for block in blocks:
        kinds = block.dom_kind()
        leading = len(kinds) - len(kinds.lstrip("S"))
        loops = [it.loop_rv for it in block.iters]
        if block.is_injective():
            sch, done = _attempt(sch, lambda s: _injective(s, block.block_rv, lanes))
        else:
            sch, done = _attempt(sch, lambda s: _parallel(s, loops[:leading]))
        changed = changed or bool(done)
    return (sch, "parallel") if changed else None


DEFAULT_RULES: tuple[Rule, ...] = (tile_rule, parallel_rule)


# --- the module ------------------------------------------------------------------------------
@dataclasses.dataclass
class ScheduleReport:
    """What schedule_module did, for metrics.json's "schedule" (see `to_dict`)."""

    vector_lanes: int
    functions: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> kind
    naive: list[str] = dataclasses.field(default_factory=list)
    failures: list[dict[str, str]] = dataclasses.field(default_factory=list)  # function, rule, error

    def to_dict(self) -> dict[str, Any]:
        counts = {kind: 0 for kind in KINDS}
        for kind in self.functions.values():
            counts[kind] = counts.get(kind, 0) + 1
        return {
            "rule": RULE_VERSION,
            "vector_lanes": self.vector_lanes,
            "functions": len(self.functions),
            "by_kind": counts,
            "unscheduled": sorted(n for n, k in self.functions.items() if k == "unscheduled"),
            "naive": sorted(self.naive),
            "failures": sorted(self.failures, key=lambda f: (f["function"], f["rule"])),
        }


def schedule_module(mod: "tvm.IRModule", target: "tvm.target.Target",
                    rules: Iterable[Rule] = DEFAULT_RULES) -> tuple["tvm.IRModule", dict[str, Any]]:
    """Schedule every PrimFunc of `mod` with the first of `rules` whose result builds.

    Every function's first choice is built in one go (one LLVM run, as fast as the final
    build); only if that fails is each built alone, and a function whose schedule fails
    gets its next rule's, down to no schedule at all. Functions already marked
    `tirx.is_scheduled` are kept as they are. Returns (a new module, ScheduleReport.to_dict()).
    """
    lanes = vector_lanes(target)
    report = ScheduleReport(vector_lanes=lanes)
    rules = tuple(rules)
    choices: dict[Any, Iterator[tuple[Any, str]]] = {}
    chosen: dict[Any, tuple[Any, str]] = {}
    for gvar, func in sorted(_prim_funcs(mod), key=lambda item: item[0].name_hint):
        if _is_scheduled(func):
            report.functions[gvar.name_hint] = "already_scheduled"
            continue
        choices[gvar] = _candidates(func, gvar.name_hint, target, lanes, rules, report)
        chosen[gvar] = next(choices[gvar])
    if _build_error({g.name_hint: f for g, (f, _) in chosen.items()}, target) is not None:
        for gvar, candidates in choices.items():
            while chosen[gvar][1] != "unscheduled":
                error = _build_error({gvar.name_hint: chosen[gvar][0]}, target)
                if error is None:
                    break
                rule = chosen[gvar][0].attrs[RULE_ATTR]
                log.warning("the %s schedule of %s does not build: %s", rule, gvar.name_hint, error)
                report.failures.append({"function": gvar.name_hint, "rule": str(rule), "error": error})
                chosen[gvar] = next(candidates)
    mod = mod.clone()  # the caller's module stays as it was
    for gvar, (func, kind) in chosen.items():
        mod[gvar] = func
        report.functions[gvar.name_hint] = kind
    report.naive = [name for name, func in prim_funcs_by_name(mod).items() if not has_fast_loops(func)]
    summary = report.to_dict()
    log.info("scheduled %d functions (%s); %d naive, %d schedules failed", summary["functions"],
             ", ".join(f"{k} {n}" for k, n in summary["by_kind"].items() if n), len(summary["naive"]),
             len(summary["failures"]))
    return mod, summary


def _prim_funcs(mod: "tvm.IRModule") -> list:
    from tvm import tirx

    return [(gvar, func) for gvar, func in mod.functions_items() if isinstance(func, tirx.PrimFunc)]


def prim_funcs_by_name(mod: "tvm.IRModule") -> dict[str, Any]:
    return {gvar.name_hint: func for gvar, func in _prim_funcs(mod)}


def _is_scheduled(func: Any) -> bool:
    return func.attrs is not None and "tirx.is_scheduled" in func.attrs and bool(func.attrs["tirx.is_scheduled"])


def _candidates(func: Any, name: str, target: Any, lanes: int, rules: tuple,
                report: ScheduleReport) -> Iterator[tuple[Any, str]]:
    """(function, kind) from each rule that applies, in order; last the function unchanged.

    A scheduled function carries `tirx.is_scheduled` (so no later pass schedules it again)
    and RULE_ATTR, the rule that made it.
    """
    for rule in rules:
        try:
            scheduled = rule(func, target, lanes)
        except SCHEDULE_ERRORS as exc:
            report.failures.append({"function": name, "rule": rule.__name__, "error": _last_line(exc)})
            continue
        if scheduled is not None:
            sch, kind = scheduled
            yield sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr(RULE_ATTR, rule.__name__), kind
    yield func, "unscheduled"


def _build_error(funcs: dict[str, Any], target: Any) -> str | None:
    """None if these PrimFuncs build together for `target`, else the error's last line."""
    import tvm

    if not funcs:
        return None
    mod = tvm.IRModule({name: func.with_attr("global_symbol", name) for name, func in funcs.items()})
    try:
        tvm.tirx.build(mod, target=target)
    except MemoryError:
        raise
    except Exception as exc:  # any failure of lowering or LLVM means: do not use this schedule
        return _last_line(exc)
    return None


def _last_line(exc: BaseException) -> str:
    from agent.compile import summarize_error

    return summarize_error(exc, limit=200)


def has_fast_loops(func: Any) -> bool:
    """Whether the function's code has a parallel or a vectorized loop anywhere (one of a
    single iteration does not count: it is a serial loop by another name)."""
    from tvm import tirx

    fast = (tirx.ForKind.PARALLEL, tirx.ForKind.VECTORIZED)
    stack = [func.body]
    while stack:
        node = stack.pop()
        if isinstance(node, tirx.For) and node.kind in fast and not _is_one(node.extent):
            return True
        for field in ("body", "block", "init", "then_case", "else_case"):
            child = getattr(node, field, None)
            if child is not None and not isinstance(child, (int, float, str)):
                stack.append(child)
        stack.extend(getattr(node, "seq", ()) or ())
    return False


def _is_one(extent: Any) -> bool:
    from tvm import tirx

    return isinstance(extent, tirx.IntImm) and int(extent) == 1
