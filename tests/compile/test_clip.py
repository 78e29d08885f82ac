"""agent.compile.clip: a ReLU6 between two convolutions (MobileNet's Clip(0, 6)) is laid out
NHWC with them and fused into the first one, not wrapped in transposes back to NCHW, and the
compiled model computes what onnxruntime does."""
from __future__ import annotations

import numpy as np
import pytest

from tests.compile.helpers import compile_artifact, onnxruntime_outputs, save


def conv_relu6_conv():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    inits = {"w1": rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
             "w2": rng.standard_normal((8, 16, 1, 1)).astype(np.float32),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "relu6", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 12, 12])],
                              initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save(conv_relu6_conv(), tmp_path_factory.mktemp("clip") / "relu6.onnx")


def test_the_clip_is_fused_into_the_convolution_without_transposes(model_path):
    import tvm

    from agent.compile import onnx_frontend, optimize
    from agent.compile.target import host_target

    imported = onnx_frontend.load_and_import(model_path, None)
    fused = optimize.fuse(imported.mod, host_target()[0])
    names = [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert not [n for n in names if n.startswith(("maximum", "minimum"))], names  # no longer separate kernels
    clipped = [n for n in names if "conv2d" in n and "maximum" in n and "minimum" in n]
    assert clipped, names
    transposes = [n for n in names if "transpose" in n]
    assert len(transposes) <= 2, names  # the model's input and output, nothing around the clip


def test_the_compiled_model_computes_what_onnxruntime_does(model_path, tmp_path):
    from agent import runtime

    x = np.random.default_rng(2).standard_normal((1, 8, 12, 12)).astype(np.float32) * 3
    artifact = compile_artifact(model_path, tmp_path / "artifact")
    got = runtime.load(artifact).run({"x": x})[0]
    np.testing.assert_allclose(got, onnxruntime_outputs(model_path, {"x": x})[0], rtol=1e-4, atol=1e-4)
