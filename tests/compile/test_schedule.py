"""agent.compile.schedule: every kernel of a small conv+relu+matmul model gets a parallel,
vectorized schedule that computes what the unscheduled one does; a schedule that does not
build is replaced by the next rule's, or by none, and the report says so."""
from __future__ import annotations

import numpy as np
import pytest

from agent.compile import schedule

SHAPES = {"x": (1, 14, 14, 8), "w": (3, 3, 8, 16), "b": (16,), "m": (14 * 14 * 16, 16)}


def tiny_module():
    """relu(conv3x3(x, w) + b) flattened, times m: NHWC/HWIO, as optimize lays convolutions out."""
    from tvm import relax

    params = {name: relax.Var(name, relax.TensorType(shape, "float32")) for name, shape in SHAPES.items()}
    builder = relax.BlockBuilder()
    with builder.function("main", list(params.values())):
        with builder.dataflow():
            conv = builder.emit(relax.op.nn.conv2d(params["x"], params["w"], padding=[1, 1, 1, 1],
                                                   data_layout="NHWC", kernel_layout="HWIO"))
            hidden = builder.emit(relax.op.nn.relu(relax.op.add(conv, params["b"])))
            flat = relax.op.reshape(hidden, (1, SHAPES["m"][0]))
            out = builder.emit_output(relax.op.matmul(flat, params["m"]))
        builder.emit_func_output(out)
    return builder.get()


@pytest.fixture(scope="module")
def target():
    from agent.compile.target import host_target

    return host_target()[0]


@pytest.fixture(scope="module")
def fused(target):
    """Tiny, legalized and fused as the compile stage does it, not yet scheduled."""
    from tvm import relax

    with target:
        return relax.get_pipeline("zero")(tiny_module())


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(7)
    return [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES.values()]


def run(mod, target, inputs) -> np.ndarray:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()


@pytest.fixture(scope="module")
def expected(fused, target, inputs):
    """What the unscheduled kernels compute (checked against numpy's matmul on the way)."""
    return run(fused, target, inputs)


def kernels(mod) -> dict:
    return dict(schedule.prim_funcs_by_name(mod))


def broken_rule(func, target, lanes):
    """A loop bound to a GPU thread: a schedule TVM accepts and no CPU build does."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    block = sch.get_child_blocks(sch.get_sblock("root"))[0]
    sch.bind(sch.get_loops(block)[0], "threadIdx.x")
    return sch, "tiled"


def test_every_kernel_is_scheduled_and_computes_the_same(fused, target, inputs, expected):
    mod, report = schedule.schedule_module(fused, target)
    names = sorted(kernels(mod))
    assert report["functions"] == len(names) >= 3
    assert report["by_kind"]["tiled"] >= 2  # the convolution and the matmul
    assert report["unscheduled"] == [] and report["naive"] == [] and report["failures"] == []
    assert report["rule"] == schedule.RULE_VERSION and report["vector_lanes"] == schedule.vector_lanes(target)
    for name, func in kernels(mod).items():
        assert bool(func.attrs["tirx.is_scheduled"]), name
        assert str(func.attrs[schedule.RULE_ATTR]) == "tile_rule"
    conv = next(f for n, f in kernels(mod).items() if "conv2d" in n).script()
    assert "T.parallel(" in conv and "T.vectorized(" in conv and "T.unroll(" in conv
    np.testing.assert_allclose(run(mod, target, inputs), expected, rtol=1e-4, atol=1e-4)


def test_the_epilogue_reads_the_tiles_accumulators(fused, target):
    """Bias and ReLU are computed on each tile from its accumulators: the convolution's output
    is never written whole to be read back by a second pass."""
    mod, _ = schedule.schedule_module(fused, target)
    conv = next(f for n, f in kernels(mod).items() if "conv2d" in n).script()
    assert "conv2d_nhwc_intermediate = T.sblock_alloc_buffer" not in conv
    assert "T.max(conv2d_nhwc_intermediate_local[" in conv


def test_a_schedule_that_does_not_build_falls_back_to_the_parallel_rule(fused, target, inputs, expected):
    mod, report = schedule.schedule_module(fused, target, rules=(broken_rule, schedule.parallel_rule))
    names = sorted(kernels(mod))
    assert report["by_kind"]["parallel"] == len(names) and report["unscheduled"] == []
    assert [f["function"] for f in report["failures"]] == names
    assert all(f["rule"] == "broken_rule" and f["error"] for f in report["failures"])
    assert report["naive"] == []  # the fallback still runs every kernel in parallel
    np.testing.assert_allclose(run(mod, target, inputs), expected, rtol=1e-4, atol=1e-4)


def test_when_no_schedule_builds_the_kernel_stays_as_it_was_and_is_named(fused, target, inputs, expected):
    mod, report = schedule.schedule_module(fused, target, rules=(broken_rule,))
    names = sorted(kernels(mod))
    assert report["unscheduled"] == names == report["naive"]
    assert report["by_kind"]["unscheduled"] == len(names)
    for name, func in kernels(mod).items():
        assert func.same_as(kernels(fused)[name])
    np.testing.assert_allclose(run(mod, target, inputs), expected, rtol=1e-4, atol=1e-4)


def test_unscheduled_reference_is_right(inputs, expected):
    x, w, b, m = inputs
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = sum(padded[:, i:i + 14, j:j + 14, :] @ w[i, j] for i in range(3) for j in range(3))
    want = np.maximum(conv + b, 0).reshape(1, -1) @ m
    np.testing.assert_allclose(expected, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("config, lanes", [
    ({"mtriple": "x86_64-unknown-linux-gnu", "mcpu": "znver3"}, 8),          # AVX2
    ({"mtriple": "x86_64-unknown-linux-gnu", "mcpu": "skylake-avx512"}, 16),  # AVX-512
    ({"mtriple": "x86_64-unknown-linux-gnu", "mcpu": "x86-64"}, 4),           # SSE2 only
    ({"mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}, 4),              # NEON
])
def test_vector_lanes_follow_the_targets_features(config, lanes):
    import tvm

    assert schedule.vector_lanes(tvm.target.Target({"kind": "llvm", "num-cores": 4, **config})) == lanes


@pytest.mark.parametrize("kernel, stride, pads, rewritten", [
    (2, 2, [0, 0, 0, 0], True),     # the detection heads' upsampling: a matmul and a pixel shuffle
    (3, 3, [0, 0, 0, 0], True),
    (3, 2, [1, 1, 1, 1], False),    # taps overlap: stays a conv2d_transpose
    (2, 2, [1, 1, 1, 1], False),
])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_a_conv2d_transpose_whose_kernel_is_its_stride_becomes_a_matmul(tmp_path, kernel, stride, pads, rewritten,
                                                                      layout):
    from agent import runtime
    from agent.compile import onnx_frontend, optimize
    from tests.compile.helpers import compile_artifact, onnxruntime_outputs, save, tiny_model

    rng = np.random.default_rng(7)
    weights = rng.standard_normal((6, 5, kernel, kernel)).astype(np.float32)   # IOHW: 6 in, 5 out
    bias = rng.standard_normal(5).astype(np.float32)
    size = (9 - 1) * stride + kernel - pads[0] - pads[2]
    path = save(tiny_model("ConvTranspose", {"x": [1, 6, 9, 11]}, [1, 5, size, (11 - 1) * stride + kernel - pads[1] - pads[3]],
                           attrs={"strides": [stride, stride], "kernel_shape": [kernel, kernel], "pads": pads},
                           initializers={"w": weights, "b": bias}), tmp_path / "t.onnx")
    imported = onnx_frontend.load_and_import(path, None)
    text = optimize.transposed_convolutions_as_matmul(imported.mod).script()
    assert ("conv2d_transpose" not in text) == rewritten and ("matmul" in text) == rewritten
    x = rng.standard_normal((1, 6, 9, 11)).astype(np.float32)
    got = runtime.load(compile_artifact(path, tmp_path / "out", layout=layout)).run({"x": x})
    np.testing.assert_allclose(got[0], onnxruntime_outputs(path, {"x": x})[0], rtol=1e-4, atol=1e-4)


def constant_weights_module(weights: dict[str, np.ndarray]):
    """tiny_module with w, b and m bound as constants, as a model's weights are."""
    from tvm import relax

    mod = tiny_module()
    return relax.transform.BindParams("main", {name: value for name, value in weights.items()})(mod)


def test_constant_weights_are_packed_at_compile_time_and_give_the_same_outputs(target, inputs, expected):
    """mark_weights marks the constants; the tile rule asks for panels; pack_weights computes them
    once (no repacking function is left for inference) and the kernels read them packed."""
    import tvm
    from tvm import relax

    from agent.compile import build, optimize

    x, *weights = inputs
    with target:
        fused = optimize.mark_weights(relax.get_pipeline("zero")(
            constant_weights_module(dict(zip(["w", "b", "m"], weights)))))
    marked = {name: [int(i) for i in func.attrs["layout_free_buffers"]] for name, func in kernels(fused).items()
              if func.attrs is not None and "layout_free_buffers" in func.attrs}
    assert marked and all(indices for indices in marked.values())  # the conv's and the matmul's weights

    scheduled, _ = schedule.schedule_module(fused, target)
    with target:
        packed = optimize.pack_weights(scheduled)
    names = [gvar.name_hint for gvar in packed.get_global_vars()]
    assert any(name.endswith("_prepacked") for name in names), names
    assert not any(name.endswith("_weight_prepack") for name in names), names  # folded, not run per inference

    vm = relax.VirtualMachine(build.build(scheduled, target), tvm.cpu())
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-4)


def bias_add_packed_8_by_128(bias: np.ndarray):
    """x + bias over 1000 columns, its kernel split 8 x 128 (1024: 24 past the end, guarded)
    and its bias packed [8, 128] by MetaSchedule's RewriteLayout, as a tuned schedule does."""
    import tvm
    from tvm import relax, s_tir
    from tvm.s_tir import meta_schedule as ms
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def add(a: T.Buffer((T.int64(1), T.int64(1000)), "float32"), b: T.Buffer((T.int64(1000),), "float32"),
            c: T.Buffer((T.int64(1), T.int64(1000)), "float32")):
        T.func_attr({"layout_free_buffers": [1], "tirx.noalias": True})
        for i, j in T.grid(T.int64(1), T.int64(1000)):
            with T.sblock("c"):
                vi, vj = T.axis.remap("SS", [i, j])
                c[vi, vj] = a[vi, vj] + b[vj]

    sch = s_tir.Schedule(tvm.IRModule({"main": add}))
    sch.split(sch.get_loops(sch.get_sblock("c"))[1], [None, 128])
    assert ms.postproc.RewriteLayout().apply(sch)
    builder = relax.BlockBuilder()
    kernel = builder.add_func(sch.mod["main"].with_attr("tirx.is_scheduled", True), "add")
    x = relax.Var("x", relax.TensorType((1, 1000), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(relax.call_tir(kernel, [x, relax.const(bias)],
                                                     relax.TensorType((1, 1000), "float32")))
        builder.emit_func_output(out)
    return builder.get()


def test_a_packed_weight_larger_than_the_weight_is_padded_with_zeros_every_time(target):
    """A packed layout can hold more than the weight ([8, 128] for 1000 values). Its padding
    went into model.so as whatever memory held, NaN at times, so two compiles of one model
    differed; it is zero now, and the kernel still reads only the 1000."""
    import tvm
    from tvm import relax

    from agent.compile import build, optimize

    bias = np.arange(1000, dtype=np.float32)
    mod = bias_add_packed_8_by_128(bias)
    packed = []
    for _ in range(3):
        litter = [np.full(1024, np.nan, dtype=np.float32) for _ in range(64)]  # freed memory, NaN
        del litter
        with target:
            folded = optimize.pack_weights(mod)
        constants = []
        relax.analysis.post_order_visit(folded["main"], lambda e: constants.append(e.value.numpy())
                                        if isinstance(e, tvm.ir.GenericConst) else None)
        [value] = [c for c in constants if c.shape == (8, 128)]
        packed.append(value)
    assert packed[0].shape == (8, 128)
    np.testing.assert_array_equal(packed[0].reshape(-1)[:1000], bias)
    assert not packed[0].reshape(-1)[1000:].any()
    assert all(np.array_equal(p, packed[0]) for p in packed[1:])

    x = np.random.default_rng(3).standard_normal((1, 1000)).astype(np.float32)
    vm = relax.VirtualMachine(build.build(mod, target), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), x + bias)


def test_a_record_of_a_schedule_that_packs_weights_survives_json(fused, target):
    """TuningRecord.as_json() cannot write the IndexMap of RewriteLayout's TransformLayout;
    record_json can, and TVM reads it back to the same schedule."""
    import json

    import tvm
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from agent.compile.tuning.search import record_json

    func = kernels(fused)["matmul"].with_attr("layout_free_buffers", [1])
    sch, _ = schedule.tile_rule(func, target, schedule.vector_lanes(target))
    assert any(inst.kind.name == "TransformLayout" for inst in sch.trace.insts)
    workload = ms.database.Workload(tvm.IRModule({"main": func}))
    record = ms.database.TuningRecord(sch.trace, workload, [0.001], target)
    with pytest.raises(TypeError):
        record.as_json()
    back = ms.database.TuningRecord.from_json(json.loads(json.dumps(record_json(record))), workload)
    replayed = s_tir.Schedule(tvm.IRModule({"main": func}))
    back.trace.apply_to_schedule(replayed, remove_postproc=False)
    tvm.ir.assert_structural_equal(replayed.mod, sch.mod)



def scheduled_conv(target, shapes: dict, **conv_attrs):
    """One NHWC/HWIO conv2d of x by w (`shapes`), fused as the compile stage does it and
    scheduled by the rules: (fused module, scheduled module, the conv kernel's TVMScript)."""
    from tvm import relax

    params = {name: relax.Var(name, relax.TensorType(shape, "float32")) for name, shape in shapes.items()}
    builder = relax.BlockBuilder()
    with builder.function("main", list(params.values())):
        with builder.dataflow():
            out = builder.emit_output(relax.op.nn.conv2d(params["x"], params["w"], data_layout="NHWC",
                                                         kernel_layout="HWIO", **conv_attrs))
        builder.emit_func_output(out)
    with target:
        fused = relax.get_pipeline("zero")(builder.get())
    mod, report = schedule.schedule_module(fused, target)
    assert report["by_kind"]["tiled"] == 1 and report["failures"] == []
    return fused, mod, next(f for n, f in kernels(mod).items() if "conv2d" in n).script()


def assert_computes_the_same(fused, mod, target, shapes: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes.values()]
    np.testing.assert_allclose(run(mod, target, arrays), run(fused, target, arrays), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel, size, vectors, rows, predicated", [
    (3, 7, 4, 4, True), (1, 7, 4, 7, False), (3, 8, 3, 8, False)])
def test_row_tiles_follow_the_reduction_and_the_map(target, kernel, size, vectors, rows, predicated):
    """A 3x3 convolution on a 7x7 map takes 4-row tiles, the last one predicated (4 + 3);
    a 1x1 convolution, bound by streaming its weights, takes 7-row tiles; a tile one vector
    wide (3 vectors of output channels: two do not divide them) is 8 rows tall. All compute
    what the unscheduled kernel does."""
    channels = vectors * schedule.vector_lanes(target)
    shapes = {"x": (1, size, size, 16), "w": (kernel, kernel, 16, channels)}
    fused, mod, conv = scheduled_conv(target, shapes, padding=[kernel // 2] * 4)
    assert f"T.unroll(T.int64({rows}))" in conv
    assert ("T.where(" in conv) == predicated
    assert_computes_the_same(fused, mod, target, shapes, seed=3)


@pytest.mark.parametrize("kernel", [3, 1])
def test_on_a_14x14_map_the_tile_is_2x2_positions_without_a_predicated_tail(target, kernel):
    """4 divides neither side of a 14x14 map: a tile of 2 rows x 2 columns of positions keeps
    8 accumulators with nothing predicated (4 + 4 + 4 + 2 rows was the alternative, or 7 rows,
    which spill). It computes what the unscheduled kernel does."""
    shapes = {"x": (1, 14, 14, 16), "w": (kernel, kernel, 16, 2 * schedule.vector_lanes(target))}
    fused, mod, conv = scheduled_conv(target, shapes, padding=[kernel // 2] * 4)
    assert conv.count("T.unroll(T.int64(2))") >= 2 and "T.where(" not in conv
    assert_computes_the_same(fused, mod, target, shapes, seed=13)


@pytest.mark.parametrize("channels_in, channels_out, column_first", [(512, 256, True), (16, 64, False)])
def test_the_column_loop_goes_first_when_weights_reread_per_row_tile_would_leave_the_cache(
        target, channels_in, channels_out, column_first):
    """A 1x1 convolution on a 14x14 map with 512 KiB of weights (more than L2_BYTES) and 28
    row tiles runs its 16 columns outermost and in parallel, each column's weights read once;
    one whose weights fit the cache keeps its row tiles outermost. Both compute what the
    unscheduled kernel does."""
    shapes = {"x": (1, 14, 14, channels_in), "w": (1, 1, channels_in, channels_out)}
    assert (channels_in * channels_out * 4 > schedule.L2_BYTES) == column_first
    fused, mod, conv = scheduled_conv(target, shapes)
    columns = channels_out // (schedule.TILE_VECTORS * schedule.vector_lanes(target))
    assert (f"T.parallel(T.int64({columns}))" in conv) == column_first
    assert_computes_the_same(fused, mod, target, shapes, seed=5)


@pytest.mark.parametrize("groups, padded_copy", [(32, False), (1, True)])
def test_a_depthwise_convolution_reads_its_zero_padding_inline(target, groups, padded_copy):
    """A depthwise 3x3 convolution reads its input along the channels it vectorizes, so its
    zero padding is folded into it instead of being written out as a padded copy; a dense
    one, which broadcasts each input value, keeps the copy (a bounds test per multiply-add
    would stop it vectorizing). Both compute what the unscheduled kernel does."""
    shapes = {"x": (1, 14, 14, 32), "w": (3, 3, 32 // groups, 32)}
    fused, mod, conv = scheduled_conv(target, shapes, padding=[1] * 4, groups=groups)
    assert "pad_temp" in next(f for n, f in kernels(fused).items() if "conv2d" in n).script()
    assert ('T.sblock("pad_temp")' in conv) == padded_copy
    assert_computes_the_same(fused, mod, target, shapes, seed=11)


def test_an_epilogue_with_more_outputs_than_the_tile_stays_a_pass_of_its_own(target):
    """MediaPipe's face-landmark block: 2x2 max pooling (16 channels), its channels padded
    with zeros to 32 and added to a 32-channel tensor, fused into one kernel. Computed on
    the pooling's tile, the add got only the 16 channels that read the tile and never wrote
    the other 16 (the model's outputs were off by up to 19). It computes what the unscheduled
    kernel does."""
    from tvm import relax

    shapes = {"x": (1, 16, 16, 16), "y": (1, 8, 8, 32)}
    params = {name: relax.Var(name, relax.TensorType(shape, "float32")) for name, shape in shapes.items()}
    builder = relax.BlockBuilder()
    with builder.function("main", list(params.values())):
        with builder.dataflow():
            pooled = relax.op.nn.max_pool2d(params["x"], pool_size=(2, 2), strides=(2, 2), layout="NHWC")
            padded = relax.op.nn.pad(pooled, pad_width=[0, 0, 0, 0, 0, 0, 0, 16])
            out = builder.emit_output(relax.op.add(padded, params["y"]))
        builder.emit_func_output(out)
    with target:
        fused = relax.get_pipeline("zero")(builder.get())
    assert len(kernels(fused)) == 1, "pool, pad and add are no longer fused: this tests nothing"
    mod, report = schedule.schedule_module(fused, target)
    assert report["by_kind"]["tiled"] == 1 and report["failures"] == []
    assert_computes_the_same(fused, mod, target, shapes, seed=17)


def test_channels_no_whole_register_divides_take_a_half_register_tile(target):
    """24 output channels with 512-bit vectors: half a register wide (8 floats) and 12 rows
    tall where 12 divides an axis, else 8; before, 4 floats by 4 rows ran 3.3x slower. With
    256-bit vectors 24 channels are whole registers and nothing changes. Both compute what
    the unscheduled kernel does."""
    lanes = schedule.vector_lanes(target)
    if lanes // 2 <= schedule.MIN_TILE_WIDTH or 24 % lanes == 0:
        pytest.skip(f"{lanes} lanes: 24 channels take whole registers or the narrowest tile")
    for size, rows in (((12, 10), 12), ((8, 10), 8)):
        shapes = {"x": (1, *size, 16), "w": (3, 3, 16, 24)}
        fused, mod, conv = scheduled_conv(target, shapes, padding=[1] * 4)
        assert f"T.vectorized(T.int64({lanes // 2}))" in conv
        assert f"T.unroll(T.int64({rows}))" in conv
        assert_computes_the_same(fused, mod, target, shapes, seed=19)
