"""One job per Framework beyond ONNX through every stage: PYTORCH (TorchScript in a .tar.gz,
Neo's list DataInputConfig) and TFLITE (a bare int8 .tflite), verified and benchmarked against
their own runtimes. The PyTorch frontend and the torch engine have their own tests in CI
(tests/compile/test_torch_frontend.py, tests/bench/test_reference_engines.py); this job is slow."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from agent import metrics as contract
from agent import pipeline, report, runtime
from agent.errors import ClientError
from agent.transports import topics
from tests.test_pipeline import STAGES, make_job, run

torch = pytest.importorskip("torch")

from tests.compile import tflite_models, torch_models  # noqa: E402


def framework_job(uri: str, out: str, framework: str, **input_config):
    job = make_job(uri, out)
    job.request["InputConfig"].update(Framework=framework, **input_config)
    return job


def check_reference_metrics(m: dict, framework: str, engine: str) -> None:
    assert list(m)[: len(contract.CONTRACT_KEYS)] == list(contract.CONTRACT_KEYS)
    assert m["framework"] == framework and m["reference_engine"] == engine
    assert m["onnxruntime"] is None and m["speedup_vs_onnxruntime"] is None
    assert m["onnxruntime_absent"] == (f"the model is {framework}, which onnxruntime does not run; its reference is "
                                       f"{engine} (see reference, speedup_vs_reference)")
    for name in ("tvm", "reference"):
        assert set(contract.ENGINE_KEYS) <= set(m[name]) and m[name]["latency_ms"]["p50"] > 0
    assert m["reference"]["engine"] == engine and m["tvm"]["engine"] == "tvm"
    p50 = {name: m[name]["latency_ms"]["p50"] for name in ("tvm", "reference")}
    assert m["speedup_vs_reference"] == pytest.approx(p50["reference"] / p50["tvm"])
    assert m["verification"]["passed"] is True


@pytest.mark.slow  # ~50 s here: four worker processes each import torch or TVM; the TFLite job runs in CI
def test_a_torchscript_job(tmp_path):
    image = torch.rand(1, 3, 16, 16)
    model = torch_models.traced(torch_models.ConvNet, tmp_path / "src" / "convnet.pt", image)
    archive = tmp_path / "convnet.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model, arcname="convnet.pt")
    job = framework_job(archive.as_uri(), (tmp_path / "out").as_uri(), "PYTORCH", FrameworkVersion="1.13",
                        DataInputConfig="[[1, 3, 16, 16]]")
    result, reporter = run(tmp_path, job)
    assert reporter.stages == STAGES and reporter.derived_configs == []
    assert ("verify", 45.0, "running TVM and torch on the same inputs") in reporter.events
    m = result.metrics
    check_reference_metrics(m, "PYTORCH", "torch")
    assert m["reference"]["version"] == torch.__version__ and m["versions"]["torch"] == torch.__version__
    assert m["inputs"] == [{"name": "image", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert [o["name"] for o in m["outputs"]] == ["output0", "output1"]
    assert set(m["compile_breakdown_s"]) == {"load", "convert", "import", "optimize", "build", "export"}
    with tarfile.open(result.local_artifact) as tar:
        metadata = json.load(tar.extractfile("metadata.json"))
    assert metadata["framework"] == "PYTORCH" and metadata["opset"] is None
    compiled = runtime.load(result.local_artifact)
    logits, probabilities = compiled.run({"image": image.numpy()})
    expected = torch_models.reference(model, image.numpy())
    np.testing.assert_allclose(probabilities, expected[1], rtol=1e-4, atol=1e-6)


def test_an_int8_tflite_job(tmp_path):
    model = tflite_models.int8_classifier(tmp_path / "in" / "classifier.tflite")
    job = framework_job(model.as_uri(), (tmp_path / "out").as_uri(), "TFLITE", FrameworkVersion="2.15")
    result, reporter = run(tmp_path, job)
    assert reporter.stages == STAGES and reporter.derived_configs == ['{"input": [1, 16, 16, 3]}']
    m = result.metrics
    check_reference_metrics(m, "TFLITE", "litert")
    assert m["inputs"] == [{"name": "input", "shape": [1, 16, 16, 3], "dtype": "int8"}]
    assert m["outputs"] == [{"name": "probabilities", "shape": [1, 5], "dtype": "int8"}]
    assert (tmp_path / "out" / "classifier-ml_c5.tar.gz").is_file()
    describe = {"CompilationJobName": "test-job", "CompilationJobStatus": "COMPLETED"}
    for shown in (m, topics.metrics_summary(m)["metrics"]):  # the CLI's table, from the file or the MQTT summary
        table = report.results_table(describe, shown)
        assert f"{'latency (ms)':<22}{'TVM':>12}{'litert':>14}" in table and "speedup vs litert " in table


@pytest.mark.parametrize("framework, members, found", [
    ("PYTORCH", ["a.pt", "b.pt2"], "Exactly one .pt/.pth/.pt2 file is allowed for PYTORCH model, found 2: a.pt, b.pt2"),
    ("PYTORCH", ["model.onnx"], "Exactly one .pt/.pth/.pt2 file is allowed for PYTORCH model, found 0: none"),
    ("TFLITE", ["model.pt"], "Exactly one .tflite file is allowed for TFLITE model, found 0: none"),
])
def test_the_archive_must_hold_one_model_of_the_framework(tmp_path, framework, members, found):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in members:
            (tmp_path / name).write_bytes(b"x")
            tar.add(tmp_path / name, arcname=name)
    with pytest.raises(ClientError) as caught:
        pipeline.fetch(framework_job(archive.as_uri(), "file:///unused", framework), tmp_path / "work")
    assert caught.value.reason == f"ClientError: InputConfiguration: {found}"
