"""run_engine: each engine in its own worker process, on a small real ONNX model and its TVM build."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.bench import compare, load_npz, make_inputs, run_engine, save_npz
from agent.config import BenchConfig
from agent.errors import ServerError
from agent.storage.archive import pack

INPUT_SPECS = [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
OUTPUT_SPECS = [{"name": "y", "shape": [1, 8, 1, 1], "dtype": "float32"},
                {"name": "r", "shape": [1, 8, 16, 16], "dtype": "float32"}]
TINY_BENCH = BenchConfig(warmup_runs=2, warmup_seconds=0.0, min_iterations=5, min_seconds=0.1,
                         max_seconds=5.0, threads=1)
TIMEOUT_S = 120.0
RESULT_KEYS = {"engine", "version", "threads", "load_ms", "first_inference_ms", "latency_ms",
               "throughput_per_s", "iterations", "duration_s", "warmup_runs", "peak_rss_mb"}


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    """Conv + Relu + GlobalAveragePool, two outputs (so output order is checked too)."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info(s["name"], TensorProto.FLOAT, s["shape"]) for s in INPUT_SPECS],
        [helper.make_tensor_value_info(s["name"], TensorProto.FLOAT, s["shape"]) for s in OUTPUT_SPECS],
        [weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def tvm_artifact(onnx_model, tmp_path_factory) -> Path:
    """The artifact layout agent.runtime loads: model.so + metadata.json."""
    tvm = pytest.importorskip("tvm")
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(onnx_model), shape_dict={s["name"]: s["shape"] for s in INPUT_SPECS})
    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "num-cores": 2}))
    directory = tmp_path_factory.mktemp("artifact")
    executable.export_library(str(directory / "model.so"))
    (directory / "metadata.json").write_text(json.dumps({"inputs": INPUT_SPECS, "outputs": OUTPUT_SPECS}))
    return directory


@pytest.fixture(scope="module")
def inputs_npz(tmp_path_factory) -> Path:
    return save_npz(tmp_path_factory.mktemp("inputs") / "inputs.npz", make_inputs(INPUT_SPECS, seed=1))


@pytest.fixture(scope="module")
def reference(onnx_model, inputs_npz) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    return session.run(None, load_npz(inputs_npz))


def check_bench_result(result: dict, engine: str) -> None:
    assert set(result) == RESULT_KEYS
    assert result["engine"] == engine and result["threads"] == 1
    assert result["iterations"] >= 5 and result["duration_s"] >= 0.1
    assert result["warmup_runs"] >= 2
    assert result["throughput_per_s"] == pytest.approx(result["iterations"] / result["duration_s"])
    latency = result["latency_ms"]
    assert latency["count"] == result["iterations"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"]
    assert result["load_ms"] > 0 and result["first_inference_ms"] > 0 and result["peak_rss_mb"] > 10


def test_onnxruntime_outputs_and_benchmark(onnx_model, inputs_npz, reference, tmp_path):
    out = tmp_path / "ort.npz"
    result = run_engine("onnxruntime", onnx_model, inputs_npz, threads=1, outputs_npz=out,
                        bench=TINY_BENCH, timeout_s=TIMEOUT_S)
    check_bench_result(result, "onnxruntime")
    import onnxruntime

    assert result["version"] == onnxruntime.__version__
    outputs = load_npz(out)
    assert list(outputs) == ["y", "r"]
    assert compare(list(outputs.values()), reference, rtol=0, atol=0)["passed"]


def test_outputs_only_without_bench(onnx_model, inputs_npz, tmp_path):
    result = run_engine("onnxruntime", onnx_model, inputs_npz, threads=1, outputs_npz=tmp_path / "o.npz",
                        timeout_s=TIMEOUT_S)
    assert result["latency_ms"] is None and result["iterations"] == 0 and result["throughput_per_s"] is None
    assert (tmp_path / "o.npz").is_file()


def test_tvm_directory_matches_onnxruntime(tvm_artifact, inputs_npz, reference, tmp_path):
    out = tmp_path / "tvm.npz"
    result = run_engine("tvm", tvm_artifact, inputs_npz, threads=1, outputs_npz=out, bench=TINY_BENCH,
                        timeout_s=TIMEOUT_S)
    check_bench_result(result, "tvm")
    outputs = load_npz(out)
    assert list(outputs) == ["y", "r"]
    report = compare(list(outputs.values()), reference, rtol=1e-4, atol=1e-5)
    assert report["passed"], report


def test_tvm_tarball(tvm_artifact, inputs_npz, reference, tmp_path):
    tarball = pack({p.name: p for p in tvm_artifact.iterdir()}, tmp_path / "model.tar.gz")
    out = tmp_path / "tvm.npz"
    run_engine("tvm", tarball, inputs_npz, threads=2, outputs_npz=out, timeout_s=TIMEOUT_S)
    assert compare(list(load_npz(out).values()), reference, rtol=1e-4, atol=1e-5)["passed"]


def test_worker_crash_gives_server_error_with_stderr_tail(inputs_npz, tmp_path):
    with pytest.raises(ServerError) as info:
        run_engine("onnxruntime", tmp_path / "missing.onnx", inputs_npz, threads=1, timeout_s=TIMEOUT_S)
    reason = info.value.reason
    assert reason.startswith("ServerError: EngineWorker: The onnxruntime worker exited with status 1: ")
    assert "missing.onnx" in reason and len(reason) <= 1024 and "\n" not in reason


def test_inputs_that_do_not_fit_the_model(onnx_model, tmp_path):
    wrong = save_npz(tmp_path / "wrong.npz", {"not_x": np.zeros((1, 3, 16, 16), np.float32)})
    with pytest.raises(ServerError, match="lacks the model's inputs"):
        run_engine("onnxruntime", onnx_model, wrong, threads=1, timeout_s=TIMEOUT_S)


def test_broken_artifact_is_a_server_error(inputs_npz, tmp_path):
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"not a tarball" * 100)
    expected = "EngineWorker: The tvm worker exited with status 1: .*ArtifactError: .*model.tar.gz"
    with pytest.raises(ServerError, match=expected):
        run_engine("tvm", bad, inputs_npz, threads=1, timeout_s=TIMEOUT_S)


def test_timeout_kills_the_worker(onnx_model, inputs_npz):
    with pytest.raises(ServerError, match="did not finish within 0.05 s and was killed"):
        run_engine("onnxruntime", onnx_model, inputs_npz, threads=1, timeout_s=0.05)


def test_unknown_engine(onnx_model, inputs_npz):
    with pytest.raises(ValueError, match="unknown engine"):
        run_engine("tensorrt", onnx_model, inputs_npz, threads=1, timeout_s=1)


def test_peak_rss_is_the_workers_own_not_its_parents(onnx_model, inputs_npz):
    """Linux carries ru_maxrss across fork+exec; a worker started by a big parent must not
    report the parent's memory as its own."""
    ballast = bytearray(600 * 2**20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    result = run_engine("onnxruntime", onnx_model, inputs_npz, threads=1, bench=TINY_BENCH, timeout_s=TIMEOUT_S)
    del ballast
    assert 0 < result["peak_rss_mb"] < 400
