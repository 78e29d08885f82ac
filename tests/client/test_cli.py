"""The remote commands as a user runs them: `neo-agent submit/describe/list/stop/delete` as
subprocesses, through a real Mosquitto broker, against an agent serving MQTT in this process;
and `neo-agent fleet-job`."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.samples import make_sample_archive
from tests.mosquitto import free_port, mosquitto  # noqa: F401  (fixture)
from tests.transports.mqtt_harness import (
    FAST_BENCH_ENV, JOB_WAIT_S, ServedAgent, mqtt_settings, real_request, scripted_request,
)

REPO = Path(__file__).resolve().parents[2]
THING = "edge-7"
CLI_TIMEOUT_S = 60.0
COMPLETED_LINE = re.compile(r"^\[\s*[\d.]+%\] COMPLETED", re.M)


@pytest.fixture
def served(tmp_path, mosquitto, request):
    """An agent serving thing THING; `@pytest.mark.parametrize("served", [...], indirect=True)`
    picks the MQTT version and whether compiles are real (default: MQTT 5, scripted)."""
    protocol, scripted = getattr(request, "param", ("5", True))
    agent = ServedAgent(tmp_path / "state", mqtt_settings(mosquitto, THING, protocol), scripted=scripted).start()
    agent.protocol = protocol
    yield agent
    agent.stop(flush_timeout=1)


def neo_agent(*args: str, broker, protocol: str = "5", timeout: float = CLI_TIMEOUT_S, popen: bool = False):
    argv = [sys.executable, "-m", "agent.cli", *args, "--thing", THING,
            "--broker", f"{broker.host}:{broker.port}", "--mqtt-version", protocol]
    env = {**os.environ, **FAST_BENCH_ENV}
    if popen:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def write(tmp_path: Path, request: dict) -> str:
    path = tmp_path / f"{request['CompilationJobName']}.json"
    path.write_text(json.dumps(request))
    return str(path)


@pytest.mark.parametrize("served", [("5", False)], indirect=True)
def test_submit_wait_follows_a_real_compile_to_the_results_table(served, mosquitto, tmp_path):
    archive = make_sample_archive(tmp_path)
    path = write(tmp_path, real_request("cli-real", archive, tmp_path / "out"))
    proc = neo_agent("submit", path, "--wait", broker=mosquitto, timeout=JOB_WAIT_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "CompilationJobArn arn:aws:sagemaker:us-east-1:000000000000:compilation-job/cli-real" in out
    positions = [out.find(f" {stage}\n") for stage in ("fetch", "prepare", "compile", "verify", "benchmark",
                                                         "package", "upload")]
    assert -1 not in positions and positions == sorted(positions), out
    assert len(COMPLETED_LINE.findall(out)) == 1, out
    assert "Status           COMPLETED" in out
    assert "verification     passed" in out
    p50 = re.search(r"^\s+p50\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert p50 and float(p50.group(1)) > 0 and float(p50.group(2)) > 0, out
    assert "speedup vs onnxruntime" in out


@pytest.mark.parametrize("served", [("5", False)], indirect=True)
def test_submit_wait_sees_completed_exactly_once_through_a_broker_crash(served, mosquitto, tmp_path):
    compiling = threading.Event()
    served.agent.events.subscribe(lambda e: e.stage == "compile" and compiling.set())
    archive = make_sample_archive(tmp_path)
    proc = neo_agent("submit", write(tmp_path, real_request("cli-crash", archive, tmp_path / "out")), "--wait",
                     broker=mosquitto, popen=True)
    try:
        assert compiling.wait(JOB_WAIT_S), "the compile never started"
        mosquitto.kill()
        time.sleep(2)
        mosquitto.start()
        out, err = proc.communicate(timeout=JOB_WAIT_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, out + err
    assert len(COMPLETED_LINE.findall(out)) == 1, out
    assert "verification     passed" in out


@pytest.mark.parametrize("served", [("3.1.1", True)], indirect=True)
def test_submit_wait_exits_1_when_the_job_fails(served, mosquitto, tmp_path):
    path = write(tmp_path, scripted_request("cli-fail", "stage=prepare fail=no-onnx-inside"))
    proc = neo_agent("submit", path, "--wait", broker=mosquitto, protocol="3.1.1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"^\[\s*[\d.]+%\] FAILED", proc.stdout, re.M)
    assert "FailureReason    ClientError: InputConfiguration: no-onnx-inside" in proc.stdout


@pytest.mark.parametrize("served", [("5", True), ("3.1.1", True)], indirect=True)
def test_submit_describe_list_stop_delete(served, mosquitto, tmp_path):
    protocol = served.protocol
    proc = neo_agent("submit", write(tmp_path, scripted_request("cli-ops")), broker=mosquitto, protocol=protocol)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "CompilationJobArn arn:aws:sagemaker:us-east-1:000000000000:compilation-job/cli-ops"
    served.wait_status("cli-ops", timeout=30)
    proc = neo_agent("describe", "cli-ops", broker=mosquitto, protocol=protocol)
    assert proc.returncode == 0 and json.loads(proc.stdout)["CompilationJobStatus"] == "COMPLETED"
    proc = neo_agent("list", "--status", "COMPLETED", broker=mosquitto, protocol=protocol)
    assert [s["CompilationJobName"] for s in json.loads(proc.stdout)["CompilationJobSummaries"]] == ["cli-ops"]
    proc = neo_agent("stop", "cli-ops", broker=mosquitto, protocol=protocol)
    assert proc.returncode == 2 and "ValidationException" in proc.stderr and "COMPLETED" in proc.stderr
    proc = neo_agent("delete", "cli-ops", broker=mosquitto, protocol=protocol)
    assert proc.returncode == 0 and json.loads(proc.stdout) == {}
    proc = neo_agent("describe", "cli-ops", broker=mosquitto, protocol=protocol)
    assert proc.returncode == 2 and "ResourceNotFound" in proc.stderr


def test_a_refused_request_exits_2_with_the_error(served, mosquitto, tmp_path):
    proc = neo_agent("submit", write(tmp_path, scripted_request("bad_name")), "--wait", broker=mosquitto)
    assert proc.returncode == 2
    assert "ValidationException" in proc.stderr and "compilationJobName" in proc.stderr


def test_no_broker_or_no_agent_exits_3(mosquitto, tmp_path):
    class Nowhere:
        host, port = "127.0.0.1", free_port()

    proc = neo_agent("list", "--timeout", "2", broker=Nowhere)
    assert proc.returncode == 3 and "cannot reach the MQTT broker" in proc.stderr
    proc = neo_agent("list", "--timeout", "2", broker=mosquitto)  # nobody serves THING
    assert proc.returncode == 3 and f"no answer to ListCompilationJobs from thing {THING}" in proc.stderr


def test_fleet_job_writes_the_document_and_prints_the_create_job_command(tmp_path):
    request = scripted_request("fleet-a", StoppingCondition={"MaxRuntimeInSeconds": 1800})
    document = tmp_path / "doc.json"
    group = "arn:aws:iot:eu-west-1:123456789012:thinggroup/cameras"
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "fleet-job", write(tmp_path, request),
                           "--thing-group", group, "--document-out", str(document)],
                          cwd=REPO, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(document.read_text())
    assert written["operation"] == "CreateCompilationJob"
    assert written["request"] == {k: v for k, v in request.items() if k != "CompilationJobName"}
    assert proc.stdout.splitlines()[-1] == (
        f"aws iot create-job --job-id fleet-a --targets {group} --document file://{document} "
        "--timeout-config inProgressTimeoutInMinutes=40")
