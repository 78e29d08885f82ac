"""The whole agent, end to end: API -> store -> runner -> child -> real TVM compile -> S3."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import boto3
import pytest

from agent.config import AgentConfig, BenchConfig
from agent.samples import make_sample_archive
from agent.service.agent import Agent
from tests.requests import job_request as request

FAST_BENCH = BenchConfig(min_iterations=5, min_seconds=0.1, warmup_runs=1, warmup_seconds=0.0, max_seconds=10)
METRIC_KEYS = {"mean", "p50", "p90", "p95", "p99", "min", "max", "stdev"}


def wait_terminal(agent: Agent, name: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        describe = agent.api.call("DescribeCompilationJob", {"CompilationJobName": name})
        if describe["CompilationJobStatus"] in ("COMPLETED", "FAILED", "STOPPED"):
            return describe
        time.sleep(0.2)
    raise AssertionError(f"{name} did not finish in {timeout} s")


def test_s3_job_end_to_end(tmp_path, s3_bucket):
    s3 = boto3.client("s3")
    archive = make_sample_archive(tmp_path)
    s3.upload_file(str(archive), s3_bucket, "in/model.tar.gz")
    events = []
    config = AgentConfig(state_dir=tmp_path / "state", bench=FAST_BENCH)
    with Agent(config) as agent:
        agent.events.subscribe(events.append)
        arn = agent.api.call("CreateCompilationJob", request(
            "e2e-s3", f"s3://{s3_bucket}/in/model.tar.gz", f"s3://{s3_bucket}/out"))["CompilationJobArn"]
        assert arn == "arn:aws:sagemaker:us-east-1:000000000000:compilation-job/e2e-s3"
        describe = wait_terminal(agent, "e2e-s3")
    assert describe["CompilationJobStatus"] == "COMPLETED", describe["FailureReason"]
    uri = describe["ModelArtifacts"]["S3ModelArtifacts"]
    assert uri.startswith(f"s3://{s3_bucket}/out/") and uri.endswith(".tar.gz")
    key = uri.split("/", 3)[3]
    body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert describe["ModelDigests"]["ArtifactDigest"] == hashlib.blake2b(body).hexdigest()
    assert json.loads(describe["DerivedInformation"]["DerivedDataInputConfig"]) == {"input": [1, 3, 64, 64]}
    # metrics.json is a contract: these names never change.
    metrics_key = key[: -len(".tar.gz")] + ".metrics.json"
    metrics = json.loads(s3.get_object(Bucket=s3_bucket, Key=metrics_key)["Body"].read())
    for engine in ("tvm", "onnxruntime"):
        assert METRIC_KEYS <= set(metrics[engine]["latency_ms"])
        for field in ("throughput_per_s", "first_inference_ms", "peak_rss_mb"):
            assert metrics[engine][field] > 0
    assert metrics["verification"]["passed"] is True
    assert metrics["speedup_vs_onnxruntime"] == pytest.approx(
        metrics["onnxruntime"]["latency_ms"]["p50"] / metrics["tvm"]["latency_ms"]["p50"])
    for key_name in ("compile_seconds", "target", "device"):
        assert key_name in metrics
    # Progress went through every stage in order, then COMPLETED, exactly once.
    stages = [e.stage for e in events if e.job_name == "e2e-s3" and e.kind == "progress"]
    order = ["fetch", "prepare", "compile", "verify", "benchmark", "package", "upload"]
    seen = [s for i, s in enumerate(stages) if s in order and (i == 0 or stages[i - 1] != s)]
    assert seen == order
    assert [e.status for e in events if e.kind == "status"][-1] == "COMPLETED"
    assert sum(1 for e in events if e.kind == "status" and e.status == "COMPLETED") == 1


def test_missing_model_fails_in_neo_terms_and_agent_goes_on(tmp_path, s3_bucket):
    config = AgentConfig(state_dir=tmp_path / "state", bench=FAST_BENCH)
    with Agent(config) as agent:
        agent.api.call("CreateCompilationJob", request(
            "missing", f"s3://{s3_bucket}/nothing/model.tar.gz", f"s3://{s3_bucket}/out"))
        describe = wait_terminal(agent, "missing", timeout=120)
        assert describe["CompilationJobStatus"] == "FAILED"
        assert describe["FailureReason"].startswith("ClientError: InputConfiguration:")
        assert "nothing/model.tar.gz" in describe["FailureReason"]
        listed = agent.api.call("ListCompilationJobs", {})
        assert [s["CompilationJobName"] for s in listed["CompilationJobSummaries"]] == ["missing"]


def test_cli_compile_runs_a_request_file(tmp_path):
    archive = make_sample_archive(tmp_path)
    out_dir = tmp_path / "out"
    req = request("cli-job", archive.as_uri(), out_dir.as_uri(),
                  InputConfig={"S3Uri": archive.as_uri(), "Framework": "ONNX",
                               "DataInputConfig": '{"input": [1, 3, 64, 64]}'})
    path = tmp_path / "request.json"
    path.write_text(json.dumps(req))
    env_state = tmp_path / "state"
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "compile", str(path), "--state-dir", str(env_state)],
        capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "NEO_AGENT_BENCH_MIN_ITERATIONS": "5", "NEO_AGENT_BENCH_MIN_SECONDS": "0.1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "COMPLETED" in proc.stdout and "verification     passed" in proc.stdout
    for stage in ("fetch", "prepare", "compile", "verify", "benchmark", "package", "upload"):
        assert stage in proc.stdout
    assert list(out_dir.glob("*.tar.gz"))


def test_cli_refuses_a_bad_request_with_exit_2(tmp_path):
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"CompilationJobName": "bad name!"}))
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "compile", str(path), "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "ValidationException" in proc.stderr and "compilationJobName" in proc.stderr
