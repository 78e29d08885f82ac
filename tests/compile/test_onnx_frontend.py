"""The ONNX frontend: inputs, shape derivation, preparation, import, and each error mapping."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.compile import onnx_frontend
from agent.errors import ClientError
from agent.samples import make_sample_model
from tests.compile.helpers import save, tiny_model
from tests.conftest import PUBLISHED_MODELS, published_model


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return make_sample_model(tmp_path_factory.mktemp("sample") / "model.onnx")


# --- inputs and derivation -------------------------------------------------------------------
def test_sample_inputs_outputs_and_derived_config(sample):
    model = onnx_frontend.load_model(sample)
    assert [s.to_dict() for s in onnx_frontend.model_inputs(model)] == [
        {"name": "input", "shape": ["N", 3, 64, 64], "dtype": "float32"}]
    imported = onnx_frontend.load_and_import(sample, None)
    assert imported.derived_config == '{"input": [1, 3, 64, 64]}'
    assert imported.shapes == {"input": [1, 3, 64, 64]}
    assert [s.to_dict() for s in imported.outputs] == [
        {"name": "logits", "shape": [1, 10], "dtype": "float32"},
        {"name": "probabilities", "shape": [1, 10], "dtype": "float32"}]
    assert imported.opset == 17
    assert set(imported.seconds) == {"load", "fold", "import"}


def test_given_config_is_used_and_nothing_is_derived(sample):
    imported = onnx_frontend.load_and_import(sample, '{"input": [4, 3, 64, 64]}')
    assert imported.derived_config is None
    assert imported.inputs[0].shape == (4, 3, 64, 64)
    assert [s.shape for s in imported.outputs] == [(4, 10), (4, 10)]


def test_initializers_listed_as_inputs_are_not_inputs():
    """Old exporters (IR < 4) list every weight among the graph inputs too."""
    weight = np.ones((3, 3), np.float32)
    model = tiny_model("MatMul", {"x": ["batch", 3]}, ["batch", 3], initializers={"w": weight})
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 3]))
    specs = onnx_frontend.model_inputs(model)
    assert [(s.name, s.shape) for s in specs] == [("x", ("batch", 3))]


def test_old_exporters_minus_one_dims_are_dynamic():
    model = tiny_model("Relu", {"x": [-1, 3, 0, 5]}, None)
    assert onnx_frontend.model_inputs(model)[0].shape == ("?", 3, "?", 5)


def test_published_ppocr_cls_needs_a_config_and_works_with_one():
    path = published_model("ppocr-cls")
    with pytest.raises(ClientError) as excinfo:
        onnx_frontend.load_and_import(path, None)
    assert excinfo.value.reason.startswith("ClientError: InputConfiguration: input 'x' has dynamic axis 2")
    assert "give its shape" in excinfo.value.reason
    shape = PUBLISHED_MODELS["ppocr-cls"][2]
    imported = onnx_frontend.load_and_import(path, json.dumps({"x": shape}))
    assert imported.inputs[0].shape == tuple(shape)
    assert [s.to_dict() for s in imported.outputs] == [
        {"name": "save_infer_model/scale_0.tmp_1", "shape": [1, 2], "dtype": "float32"}]


def test_non_tensor_inputs_are_refused():
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    out = helper.make_tensor_value_info("y", TensorProto.INT64, [])
    graph = helper.make_graph([helper.make_node("SequenceLength", ["s"], ["y"])], "g", [seq], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ClientError, match="input 's' is a sequence_type, not a tensor"):
        onnx_frontend.model_inputs(model)


# --- error mappings ----------------------------------------------------------------------------
def test_unsupported_operator_maps_to_operator_not_implemented(tmp_path):
    path = save(tiny_model("Det", {"x": [2, 2]}, []), tmp_path / "det.onnx")
    with pytest.raises(ClientError) as excinfo:
        onnx_frontend.load_and_import(path, None)
    assert excinfo.value.keyword == "OperatorNotImplemented"
    assert excinfo.value.reason.startswith(
        "ClientError: OperatorNotImplemented: Det is not supported by TVM 0.27's ONNX frontend")


def test_several_unsupported_operators_are_all_named(tmp_path):
    celu = helper.make_node("Celu", ["x"], ["c"])
    det = helper.make_node("Det", ["m"], ["d"])
    graph = helper.make_graph(
        [celu, det], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 4]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("d", TensorProto.FLOAT, None)])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "two.onnx")
    with pytest.raises(ClientError) as excinfo:
        onnx_frontend.load_and_import(path, None)
    assert excinfo.value.keyword == "OperatorNotImplemented"
    assert "Celu" in excinfo.value.detail and "Det" in excinfo.value.detail
    assert " are not supported by TVM 0.27's ONNX frontend" in excinfo.value.detail


@pytest.mark.parametrize("content", [b"this is not a protobuf \xff\xfe" * 7, b"\x0a\xff\xff\xff\xff\x0f"])
def test_corrupt_file_is_an_incompatible_model(tmp_path, content):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(ClientError) as excinfo:
        onnx_frontend.load_model(path)
    assert excinfo.value.reason.startswith("ClientError: InputConfiguration: Incompatible ONNX model: ")


def test_empty_file_has_no_graph(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ClientError, match="Incompatible ONNX model: empty.onnx holds no graph"):
        onnx_frontend.load_model(path)


def test_other_frontend_errors_name_the_operator(tmp_path):
    """A Reshape whose target shape is a runtime input: TVM 0.27 cannot import it (#20174)."""
    model = tiny_model("Reshape", {"x": [2, 3]}, None, extra_inputs=["s"])
    model.graph.input.append(helper.make_tensor_value_info("s", TensorProto.INT64, [2]))
    path = save(model, tmp_path / "reshape.onnx")
    with pytest.raises(ClientError) as excinfo:
        onnx_frontend.load_and_import(path, None)
    assert excinfo.value.keyword == "InputConfiguration"
    assert "TVM 0.27's ONNX frontend could not convert operator Reshape: " in excinfo.value.detail
    assert "Traceback" not in excinfo.value.detail


def test_shape_folding_failure_is_an_input_configuration_error(sample, monkeypatch):
    import onnxslim

    def broken(model, **kwargs):
        raise RuntimeError("Shape mismatch: (1,3,64,64) vs (1,3,60,60)\nmore detail")

    monkeypatch.setattr(onnxslim, "slim", broken)
    with pytest.raises(ClientError) as excinfo:
        onnx_frontend.load_and_import(sample, None)
    assert excinfo.value.reason == ('ClientError: InputConfiguration: the model\'s shapes could not be worked out '
                                    'for the input shapes {"input": [1, 3, 64, 64]}: Shape mismatch: '
                                    '(1,3,64,64) vs (1,3,60,60)')


# --- opsets ---------------------------------------------------------------------------------------
def _old_opset_model(opset):
    """Ops whose form changed after opset 9: Slice's starts/ends and Split's sizes as attributes,
    Upsample (a Resize from opset 10), Squeeze/Unsqueeze/ReduceSum axes as attributes."""
    nodes = [helper.make_node("Slice", ["x"], ["s"], axes=[1], starts=[1], ends=[5]),
             helper.make_node("Upsample", ["s", "scales"], ["u"], mode="nearest"),
             helper.make_node("Split", ["u"], ["a", "b"], axis=2, split=[3, 5]),
             helper.make_node("Unsqueeze", ["a"], ["a4"], axes=[0]),
             helper.make_node("Squeeze", ["a4"], ["a3"], axes=[0]),
             helper.make_node("ReduceSum", ["b"], ["r"], axes=[2], keepdims=0)]
    graph = helper.make_graph(
        nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a3", "r")],
        initializer=[numpy_helper.from_array(np.array([1, 1, 2], np.float32), "scales")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_an_old_opset_is_converted_to_13_and_compiles_to_onnxruntimes_outputs(tmp_path):
    """TVM's frontend cannot import this at opset 9 (its Slice converter reads starts as an
    input, and Upsample fails); converted to opset 13 it compiles and agrees with onnxruntime."""
    from agent import runtime
    from tests.compile.helpers import compile_artifact, onnxruntime_outputs

    path = save(_old_opset_model(9), tmp_path / "old.onnx")
    model = onnx_frontend.load_model(path)
    assert onnx_frontend.opset_version(onnx_frontend.convert_opset(model)) == onnx_frontend.MIN_OPSET == 13
    with pytest.raises(ClientError, match="could not convert operator Slice"):
        onnx_frontend.import_relax(model, {"x": [2, 6, 4]})  # what the conversion spares the user
    x = np.random.default_rng(2).standard_normal((2, 6, 4)).astype(np.float32)
    got = runtime.load(compile_artifact(path, tmp_path / "artifact")).run({"x": x})
    want = onnxruntime_outputs(path, {"x": x})
    assert [g.shape for g in got] == [w.shape for w in want] == [(2, 4, 3), (2, 4)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert onnx_frontend.load_and_import(path, None).opset == 9  # the metadata keeps the model's own


def test_a_newer_opset_than_the_frontends_is_converted_down_to_23():
    model = tiny_model("Relu", {"x": [1, 4]}, [1, 4], opset=25)
    converted = onnx_frontend.convert_opset(model)
    assert onnx_frontend.opset_version(converted) == onnx_frontend.MAX_OPSET == 23
    in_range = tiny_model("Relu", {"x": [1, 4]}, [1, 4], opset=17)
    assert onnx_frontend.convert_opset(in_range) is in_range  # left as the exporter wrote it
    assert onnx_frontend.opset_version(onnx_frontend.prepare_graph(model, {"x": [1, 4]})) == 23


def test_max_opset_is_the_newest_any_tvm_converter_implements():
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    versions = {int(name.removeprefix("_impl_v")) for converter in _get_convert_map().values()
                for name in dir(converter) if name.startswith("_impl_v")}
    assert max(versions) == onnx_frontend.MAX_OPSET


def test_an_opset_onnx_cannot_convert_is_refused_naming_it(tmp_path):
    path = save(tiny_model("Swish", {"x": [1, 4]}, [1, 4], opset=24), tmp_path / "swish.onnx")
    with pytest.raises(ClientError) as excinfo:
        onnx_frontend.load_and_import(path, None)
    assert excinfo.value.reason == (
        "ClientError: InputConfiguration: the model's opset 24 is outside the opsets 13-23 TVM 0.27's ONNX frontend "
        "is written for, and onnx could not convert it to opset 23: No Previous Version of Swish exists")


def test_a_model_without_the_default_operator_set_is_refused():
    model = tiny_model("Relu", {"x": [1, 4]}, [1, 4])
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    with pytest.raises(ClientError, match="imports no version of the default \\(ai.onnx\\) operator set"):
        onnx_frontend.convert_opset(model)


# --- external data --------------------------------------------------------------------------------
def _external_model(folder, location="weights.bin"):
    weight = np.arange(9, dtype=np.float32).reshape(3, 3)
    model = tiny_model("MatMul", {"x": [1, 3]}, [1, 3], initializers={"w": weight})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    if location != "weights.bin":
        model = onnx.load(str(path), load_external_data=False)
        for entry in model.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        onnx.save(model, str(path))
    return path


def test_external_data_inside_the_model_folder_loads(tmp_path):
    path = _external_model(tmp_path / "m")
    model = onnx_frontend.load_model(path)
    assert numpy_helper.to_array(model.graph.initializer[0])[2, 2] == 8.0
    imported = onnx_frontend.load_and_import(path, None)
    assert imported.outputs[0].shape == (1, 3)


@pytest.mark.parametrize("location, words", [
    ("../secret.bin", "outside the model's folder"),
    ("/etc/passwd", "outside the model's folder"),
    ("missing.bin", "which the archive does not contain"),
])
def test_external_data_must_stay_in_the_model_folder(tmp_path, location, words):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    path = _external_model(tmp_path / "m", location)
    with pytest.raises(ClientError) as excinfo:
        onnx_frontend.load_model(path)
    assert "Incompatible ONNX model: tensor 'w' keeps its data in" in excinfo.value.reason
    assert words in excinfo.value.reason


def test_external_data_symlink_escaping_the_folder_is_refused(tmp_path):
    path = _external_model(tmp_path / "m")
    outside = tmp_path / "outside.bin"
    (path.parent / "weights.bin").rename(outside)
    (path.parent / "weights.bin").symlink_to(outside)
    with pytest.raises(ClientError, match="outside the model's folder"):
        onnx_frontend.load_model(path)


# --- the main process never loads the compiler -------------------------------------------------------
def test_importing_the_compile_modules_loads_no_heavy_library():
    code = ("import sys, agent.pipeline, agent.compile.onnx_frontend, agent.compile.build, "
            "agent.compile.target, agent.compile.datainput, agent.runtime, agent.samples, agent.metrics\n"
            "heavy = [m for m in ('tvm', 'onnx', 'onnxslim', 'onnxruntime') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
