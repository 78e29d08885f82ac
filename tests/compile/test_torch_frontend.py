"""The PyTorch frontend on small real modules: TorchScript (traced and scripted) and torch.export
ExportedPrograms, compiled by TVM and checked against torch itself."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agent import runtime  # noqa: E402
from agent.compile import build, frontends, target, torch_frontend  # noqa: E402
from agent.errors import ClientError  # noqa: E402
from tests.compile import torch_models as models  # noqa: E402


def compile_and_run(path: Path, config: str | None, out: Path, *inputs: np.ndarray):
    """What the prepare and compile stages make of the file, run by agent.runtime on `inputs`."""
    imported = frontends.load_and_import("PYTORCH", path, config)
    tvm_target, desc = target.host_target()
    build.build_and_export(imported.mod, tvm_target, out)
    (out / "metadata.json").write_text(json.dumps({"inputs": [s.to_dict() for s in imported.inputs],
                                                   "outputs": [s.to_dict() for s in imported.outputs],
                                                   "target": desc}))
    return imported, runtime.load(out).run(list(inputs))


def assert_matches_torch(path: Path, outputs: list[np.ndarray], *inputs: np.ndarray) -> None:
    expected = models.reference(path, *inputs)
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_traced_conv_net_compiles_and_matches_torch(tmp_path):
    image = np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32)
    path = models.traced(models.ConvNet, tmp_path / "convnet.pt", torch.from_numpy(image))
    imported, outputs = compile_and_run(path, '{"input0": [1, 3, 16, 16]}', tmp_path / "out", image)
    assert [s.to_dict() for s in imported.inputs] == [{"name": "image", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert [(s.name, s.shape) for s in imported.outputs] == [("output0", (1, 10)), ("output1", (1, 10))]
    assert imported.derived_config is None and set(imported.seconds) == {"load", "convert", "import"}
    assert_matches_torch(path, outputs, image)


def test_an_exported_attention_block_derives_its_shapes(tmp_path):
    tokens = np.random.default_rng(2).random((1, 8, 32), dtype=np.float32)
    path = models.exported(models.AttentionBlock, tmp_path / "attention.pt2", torch.from_numpy(tokens))
    imported, outputs = compile_and_run(path, None, tmp_path / "out", tokens)
    assert imported.derived_config == '{"tokens": [1, 8, 32]}'
    assert_matches_torch(path, outputs, tokens)


@pytest.mark.slow
@pytest.mark.parametrize("make", ["scripted", "exported"])
def test_a_two_input_mlp_in_both_forms(tmp_path, make):
    rng = np.random.default_rng(3)
    x, y = rng.random((2, 16), dtype=np.float32), rng.random((2, 32), dtype=np.float32)
    if make == "scripted":
        path = models.scripted(models.TwoInputMLP, tmp_path / "mlp.pth")
    else:
        path = models.exported(models.TwoInputMLP, tmp_path / "mlp.pt2", torch.from_numpy(x), torch.from_numpy(y))
    imported, outputs = compile_and_run(path, "[[2, 16], [2, 32]]", tmp_path / "out", x, y)
    assert [s.name for s in imported.inputs] == ["x", "y"]
    assert_matches_torch(path, outputs, x, y)


@pytest.mark.slow
def test_a_scripted_attention_block_compiles(tmp_path):
    tokens = np.random.default_rng(4).random((2, 8, 32), dtype=np.float32)
    path = models.scripted(models.AttentionBlock, tmp_path / "attention.pt")
    _, outputs = compile_and_run(path, "[[2, 8, 32]]", tmp_path / "out", tokens)
    assert_matches_torch(path, outputs, tokens)


# --- DataInputConfig in Neo's PyTorch forms (no compile: shapes only) ---------------------------
@pytest.fixture(scope="module")
def scripted_mlp(tmp_path_factory) -> Path:
    return models.scripted(models.TwoInputMLP, tmp_path_factory.mktemp("mlp") / "mlp.pt")


@pytest.fixture(scope="module")
def dynamic_mlp(tmp_path_factory) -> Path:
    return models.exported(models.TwoInputMLP, tmp_path_factory.mktemp("mlp") / "mlp.pt2",
                           torch.rand(2, 16), torch.rand(2, 32), dynamic_batch=True)


def shapes_of(path: Path, config: str | None):
    model = torch_frontend.load_model(path)
    return torch_frontend.resolve_shapes(torch_frontend.model_inputs(model), config,
                                         exported=torch_frontend.is_exported(path))


@pytest.mark.parametrize("config", [
    "[[3, 16], [3, 32]]",                      # Neo's list form, in the forward's order
    '{"x": [3, 16], "y": [3, 32]}',            # by argument name
    '{"y": [3, 32], "x": [3, 16]}',            # by name, any order
    '{"input0": [3, 16], "input1": [3, 32]}',  # Neo's labels: in order
])
def test_both_pytorch_forms_of_data_input_config(scripted_mlp, config):
    assert shapes_of(scripted_mlp, config) == ({"x": [3, 16], "y": [3, 32]}, None)


@pytest.mark.parametrize("config, words", [
    (None, 'DataInputConfig is required for a TorchScript model, which carries no input shapes; its forward takes '
           'x, y: give e.g. {"x": [1, 3, 224, 224], "y": [1, 3, 224, 224]} or [[1, 3, 224, 224]]'),
    ('{"x": [3, 16]}', "DataInputConfig does not give the shape of input 'y'"),
    ('{"input0": [3, 16]}', "DataInputConfig gives 1 shapes (input0) but the forward takes 2 tensors: x, y"),
    ('{"x": [3, 16], "z": [1]}', "DataInputConfig names input 'z', which the model does not have"),
    ("[[3, 16]]", "DataInputConfig lists 1 shapes but the model has 2 inputs"),
    ('{"x": [3, 0], "y": [3, 32]}', "input 'x' axis 1: dims must be positive"),
])
def test_torchscript_data_input_config_refusals(scripted_mlp, config, words):
    with pytest.raises(ClientError) as caught:
        shapes_of(scripted_mlp, config)
    assert caught.value.keyword == "InputConfiguration" and words in caught.value.reason


def test_an_exported_program_names_its_dynamic_dims_and_takes_the_configs(dynamic_mlp):
    inputs = torch_frontend.model_inputs(torch_frontend.load_model(dynamic_mlp))
    assert [(s.name, isinstance(s.shape[0], str), s.shape[1:], s.dtype) for s in inputs] == [
        ("x", True, (16,), "float32"), ("y", True, (32,), "float32")]
    assert shapes_of(dynamic_mlp, None) == ({"x": [1, 16], "y": [1, 32]}, '{"x": [1, 16], "y": [1, 32]}')
    assert shapes_of(dynamic_mlp, "[[5, 16], [5, 32]]")[0] == {"x": [5, 16], "y": [5, 32]}
    with pytest.raises(ClientError, match="the model fixes this dim to 16"):
        shapes_of(dynamic_mlp, '{"x": [5, 17], "y": [5, 32]}')


def test_a_dynamic_batch_is_frozen_to_the_requested_one(dynamic_mlp):
    imported = frontends.load_and_import("PYTORCH", dynamic_mlp, "[[5, 16], [5, 32]]")
    assert [s.shape for s in imported.inputs] == [(5, 16), (5, 32)]
    assert imported.outputs[0].shape == (5, 4)


# --- refusals -------------------------------------------------------------------------------------
class Bessel(torch.nn.Module):
    def forward(self, x):
        return torch.special.bessel_j0(x)


def test_an_operator_tvm_lacks_is_named(tmp_path):
    path = tmp_path / "bessel.pt"
    torch.jit.trace(Bessel(), torch.rand(2, 8)).save(str(path))
    with pytest.raises(ClientError) as caught:
        frontends.load_and_import("PYTORCH", path, "[[2, 8]]")
    assert caught.value.reason == ("ClientError: OperatorNotImplemented: special_bessel_j0.default is not supported "
                                   "by TVM 0.27's PyTorch frontend (from_exported_program)")


def test_a_pickled_module_is_not_torchscript(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(models.ConvNet().state_dict(), path)
    with pytest.raises(ClientError) as caught:
        frontends.load_and_import("PYTORCH", path, "[[1, 3, 16, 16]]")
    assert caught.value.reason.startswith("ClientError: InputConfiguration: Incompatible PyTorch model: weights.pth "
                                          "is not a TorchScript archive (")
    assert "torch.jit.trace(model, example).save(path)" in caught.value.reason


def test_a_non_tensor_argument_is_refused_saying_how_to_fix_its_value(tmp_path):
    path = models.scripted(models.TakesAnInt, tmp_path / "repeat.pt")
    with pytest.raises(ClientError, match="forward's argument 'repeats' is a int, not a Tensor") as caught:
        frontends.load_and_import("PYTORCH", path, "[[2, 8]]")
    assert "script a wrapper whose forward calls this one with 'repeats' set" in caught.value.reason


def test_torchscript_with_control_flow_on_state_is_refused_pointing_to_pt2_or_onnx(tmp_path):
    # silero-vad's published .jit, with its int argument fixed by a wrapper, fails the same way
    path = models.scripted(models.KeepsState, tmp_path / "stream.pt")
    with pytest.raises(ClientError, match="TS2EPConverter failed for node prim::If") as caught:
        frontends.load_and_import("PYTORCH", path, "[[1, 8]]")
    assert "submit the model as a .pt2 from torch.export, or exported to ONNX" in caught.value.reason


def test_an_exported_archive_with_pickled_objects_is_refused_unread(tmp_path, dynamic_mlp):
    path = tmp_path / "opaque.pt2"
    with zipfile.ZipFile(dynamic_mlp) as source, zipfile.ZipFile(path, "w") as target_zip:
        for item in source.infolist():
            target_zip.writestr(item, source.read(item))
        target_zip.writestr("mlp/data/constants/opaque_obj_0", b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
    with pytest.raises(ClientError) as caught:
        torch_frontend.load_model(path)
    assert "holds pickled Python objects (mlp/data/constants/opaque_obj_0)" in caught.value.reason


def test_exported_programs_load_with_torch_load_held_to_weights(dynamic_mlp, monkeypatch):
    """torch.export.load calls torch.load(weights_only=False); the frontend forces weights_only."""
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD"))
        return real_load(*args, **kwargs)

    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.setattr(torch, "load", spy)
    torch_frontend.load_model(dynamic_mlp)
    assert seen and set(seen) == {"1"}
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ, "restored afterwards"


def test_not_an_exported_archive(tmp_path):
    path = tmp_path / "model.pt2"
    path.write_bytes(b"not a zip")
    with pytest.raises(ClientError, match="Incompatible PyTorch model: model.pt2 is not a torch.export archive"):
        frontends.load_and_import("PYTORCH", path, None)
