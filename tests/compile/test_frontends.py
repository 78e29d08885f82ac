"""The Framework table: what this device compiles, FrameworkVersion's rule, the archive's one
model file. Pure Python: nothing here loads a framework."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.compile import frontends
from agent.errors import ClientError


def test_every_frontend_is_supported_where_its_packages_are_installed():
    assert frontends.supported() == ("ONNX", "PYTORCH", "TFLITE")
    assert {f.reference for f in frontends.FRONTENDS.values()} == {"onnxruntime", "torch", "litert"}
    assert set(frontends.NO_FRONTEND) == {"TENSORFLOW", "KERAS", "MXNET", "DARKNET", "XGBOOST", "SKLEARN"}


def test_a_missing_package_takes_its_framework_away(monkeypatch):
    real = frontends.installed_version
    missing = ("tflite", "ai-edge-litert")
    monkeypatch.setattr(frontends, "installed_version", lambda d: None if d in missing else real(d))
    assert frontends.supported() == ("ONNX", "PYTORCH")
    assert frontends.refusal("TFLITE") == ("Framework TFLITE is not supported on this device (the tflite, "
                                           "ai-edge-litert packages are not installed here); "
                                           "it compiles ONNX, PYTORCH.")
    with pytest.raises(ClientError, match="^ClientError: InputConfiguration: Framework TFLITE is not supported"):
        frontends.frontend("TFLITE")


@pytest.mark.parametrize("installed, version, refused", [
    ("2.13.0+cpu", "2.13", False), ("2.13.0+cpu", "1.13", False), ("2.13.0+cpu", "2.0", False),
    ("2.13.0+cpu", "1.4.0", False), ("2.13.0+cpu", "2.14", True), ("2.13.0+cpu", "3.0", True),
    ("2.13.0+cpu", "2.13.9", False), ("2.13.0+cpu", "2.x", True), ("2.13.0", "10.1", True),
])
def test_framework_version_is_at_most_the_installed_major_minor(monkeypatch, installed, version, refused):
    monkeypatch.setattr(frontends, "installed_version", lambda d: installed)
    assert (frontends.version_refusal("PYTORCH", version) is not None) is refused


def test_framework_version_of_onnx_or_absent_is_not_this_modules_business():
    assert frontends.version_refusal("ONNX", "1.7") is None  # validation refuses it, by Neo's rule
    assert frontends.version_refusal("PYTORCH", None) is None


def test_the_one_model_file(tmp_path):
    files = [tmp_path / "a" / "model.PT2", tmp_path / "readme.txt", tmp_path / "x.onnx"]
    assert frontends.find_model(files, "PYTORCH", tmp_path) == files[0]
    with pytest.raises(ClientError, match=r"Exactly one \.tflite file is allowed for TFLITE model, found 0: none"):
        frontends.find_model(files, "TFLITE", tmp_path)


def test_the_api_and_the_pipeline_load_no_framework():
    """The agent's main process imports these; only the compile child and the workers may
    load torch, tflite, LiteRT or TVM."""
    code = ("import sys, agent.api.validation, agent.compile.frontends, agent.pipeline, agent.bench, "
            "agent.compile.torch_frontend, agent.compile.tflite_frontend\n"
            "assert agent.api.validation.SUPPORTED_FRAMEWORKS == ('ONNX', 'PYTORCH', 'TFLITE')\n"
            "heavy = [m for m in ('torch', 'tflite', 'ai_edge_litert', 'tvm', 'onnx', 'onnxruntime')\n"
            "         if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
