"""agent.compile.pad_columns: a recognizer's character head (MatMul by a [K, 6625] weight, then
Add and Softmax) is compiled as a matmul over whole vector tiles of zero-padded columns, sliced
back to 6625, and computes what onnxruntime does; widths a register divides, and narrow heads,
are left alone."""
from __future__ import annotations

import numpy as np
import pytest

from tests.compile.helpers import compile_artifact, onnxruntime_outputs, save

STEPS, CHANNELS = 40, 120


def character_head(classes: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits = {"w": rng.standard_normal((CHANNELS, classes)).astype(np.float32) * 0.1,
             "b": rng.standard_normal(classes).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["y"], axis=-1)]
    graph = helper.make_graph(
        nodes, "ctc_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, STEPS, CHANNELS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, STEPS, classes])],
        initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def weight_columns(model_path) -> list[int]:
    """The column counts of the 2-D [CHANNELS, N] constants the fused module's kernels are called with."""
    import tvm
    from tvm import relax

    from agent.compile import onnx_frontend, optimize
    from agent.compile.target import host_target

    fused = optimize.fuse(onnx_frontend.load_and_import(model_path, None).mod, host_target()[0])
    columns = []
    for block in fused["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if isinstance(call, relax.Call) and len(call.args) > 1 and isinstance(call.args[1], relax.Tuple):
                for arg in call.args[1].fields:
                    shape = arg.value.shape if isinstance(arg, tvm.ir.GenericConst) else ()
                    if len(shape) == 2 and shape[0] == CHANNELS:
                        columns.append(int(shape[1]))
    return columns


@pytest.fixture(scope="module")
def lanes():
    from agent.compile import schedule
    from agent.compile.target import host_target

    return schedule.vector_lanes(host_target()[0])


@pytest.fixture(scope="module")
def head_path(tmp_path_factory):
    return save(character_head(6625), tmp_path_factory.mktemp("pad") / "head.onnx")


def test_an_odd_width_is_padded_to_whole_tiles(head_path, lanes):
    from agent.compile.schedule import TILE_VECTORS

    (columns,) = weight_columns(head_path)
    width = lanes * TILE_VECTORS
    assert columns % width == 0 and 6625 < columns < 6625 + width


@pytest.mark.parametrize("case", ["narrow", "whole-registers"])
def test_narrow_heads_and_widths_a_register_divides_are_left_alone(tmp_path, lanes, case):
    from agent.compile.pad_columns import MIN_COLUMNS

    classes = MIN_COLUMNS - 3 if case == "narrow" else lanes * 829  # 6632 with AVX2's 8 lanes
    assert weight_columns(save(character_head(classes), tmp_path / "head.onnx")) == [classes]


def test_the_padded_head_computes_what_onnxruntime_does(head_path, tmp_path):
    from agent import runtime

    x = np.random.default_rng(3).standard_normal((1, STEPS, CHANNELS)).astype(np.float32)
    artifact = compile_artifact(head_path, tmp_path / "artifact")
    got = runtime.load(artifact).run({"x": x})[0]
    assert got.shape == (1, STEPS, 6625)
    np.testing.assert_allclose(got, onnxruntime_outputs(head_path, {"x": x})[0], rtol=1e-4, atol=1e-6)
