"""The PyTorch and TFLite reference engines, each in its own worker process, as verify and
benchmark run them."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

from agent.bench import load_npz, make_inputs, run_engine, save_npz
from agent.config import BenchConfig
from agent.errors import ServerError

torch = pytest.importorskip("torch")

from tests.compile import tflite_models, torch_models  # noqa: E402

TINY_BENCH = BenchConfig(warmup_runs=2, warmup_seconds=0.0, min_iterations=5, min_seconds=0.1,
                         max_seconds=5.0, threads=1)
TIMEOUT_S = 120.0


def bench_checks(result: dict, engine: str, version: str) -> None:
    assert result["engine"] == engine and result["version"] == version and result["threads"] == 1
    assert result["iterations"] >= 5 and result["warmup_runs"] >= 2
    assert 0 < result["latency_ms"]["min"] <= result["latency_ms"]["p50"] <= result["latency_ms"]["max"]
    assert result["peak_rss_mb"] > 10 and result["load_ms"] > 0


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory) -> Path:
    rng = np.random.default_rng(5)
    return save_npz(tmp_path_factory.mktemp("inputs") / "inputs.npz",
                    {"y": rng.random((2, 32), dtype=np.float32), "x": rng.random((2, 16), dtype=np.float32)})


@pytest.mark.parametrize("kind", ["pt", "pt2"])
def test_torch_runs_torchscript_and_exported_programs(tmp_path, two_inputs, kind):
    feed = load_npz(two_inputs)
    if kind == "pt":
        path = torch_models.scripted(torch_models.TwoInputMLP, tmp_path / "mlp.pt")
    else:
        path = torch_models.exported(torch_models.TwoInputMLP, tmp_path / "mlp.pt2",
                                     torch.from_numpy(feed["x"]), torch.from_numpy(feed["y"]))
    out = tmp_path / "outputs.npz"
    result = run_engine("torch", path, two_inputs, threads=1, outputs_npz=out, bench=TINY_BENCH, timeout_s=TIMEOUT_S)
    bench_checks(result, "torch", torch.__version__)
    outputs = load_npz(out)
    assert list(outputs) == ["output0"]
    # fed by the forward's argument names, whatever order the file holds them in
    np.testing.assert_array_equal(outputs["output0"], torch_models.reference(path, feed["x"], feed["y"])[0])


def test_torch_outputs_are_flattened_in_order(tmp_path):
    image = np.random.default_rng(6).random((1, 3, 16, 16), dtype=np.float32)
    path = torch_models.traced(torch_models.ConvNet, tmp_path / "convnet.pt", torch.from_numpy(image))
    inputs = save_npz(tmp_path / "inputs.npz", {"image": image})
    run_engine("torch", path, inputs, threads=1, outputs_npz=tmp_path / "out.npz", timeout_s=TIMEOUT_S)
    logits, probabilities = load_npz(tmp_path / "out.npz").values()
    np.testing.assert_allclose(probabilities, torch.softmax(torch.from_numpy(logits), -1).numpy(), rtol=1e-6)


@pytest.mark.parametrize("make", [tflite_models.float_classifier, tflite_models.int8_classifier])
def test_litert_runs_float_and_int8_models(tmp_path, make):
    from ai_edge_litert.interpreter import Interpreter

    path = make(tmp_path / "model.tflite")
    dtype = Interpreter(model_path=str(path)).get_input_details()[0]["dtype"]
    feed = make_inputs([{"name": "input", "shape": [1, 16, 16, 3], "dtype": np.dtype(dtype).name}], seed=2)
    inputs = save_npz(tmp_path / "inputs.npz", feed)
    out = tmp_path / "outputs.npz"
    result = run_engine("litert", path, inputs, threads=1, outputs_npz=out, bench=TINY_BENCH, timeout_s=TIMEOUT_S)
    bench_checks(result, "litert", importlib.metadata.version("ai-edge-litert"))
    outputs = load_npz(out)
    assert list(outputs) == ["probabilities"] and outputs["probabilities"].dtype == dtype
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], feed["input"])
    interpreter.invoke()
    np.testing.assert_array_equal(outputs["probabilities"],
                                  interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def test_a_file_torch_cannot_load_is_a_server_error(tmp_path, two_inputs):
    """The worker only sees models the frontend loaded before, so any failure is the agent's."""
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not torchscript")
    with pytest.raises(ServerError, match="The torch worker exited with status 1: .*Incompatible PyTorch model"):
        run_engine("torch", path, two_inputs, threads=1, timeout_s=TIMEOUT_S)
