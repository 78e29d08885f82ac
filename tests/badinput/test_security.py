"""SECURITY.md's mitigations that no other test proves (it cites the others by name).

One agent runs three real jobs (one that completes, one whose model is corrupt, one whose
presigned URL leads nowhere) with every kind of secret configured: S3 keys and a session
token, HTTP SigV4 keys, an MQTT password. Every file the agent leaves in its state directory
and its output location, every log record it writes at DEBUG (the agent's and each job's),
and every answer it gives is then searched for each secret. Beside that: the state
directory's mode, the MQTT allow-lists storing nothing they refuse, and a refused signature
not giving away the one expected.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import stat
import tarfile
import time

import onnx
import pytest
from onnx import TensorProto, helper

from agent.config import AgentConfig, BenchConfig, MqttConfig, S3Config
from agent.errors import ConfigError
from agent.service.agent import Agent
from agent.transports.binding import AccessPolicy
from agent.transports.http import HttpTransport
from agent.transports.sigv4 import sign
from tests.badinput.conftest import THING, Served, mqtt_error, tally, valid_body

pytestmark = pytest.mark.badinput

S3_KEY_ID = "AKIDS3BADINPUTTEST"
S3_SECRET = "s3-secret-6f1d0c9a8b7e"
S3_TOKEN = "s3-session-token-4e2a91"
HTTP_KEY_ID = "AKIDHTTPBADINPUT"
HTTP_SECRET = "http-secret-93b27c5d"
MQTT_PASSWORD = "mqtt-password-0a8e77"
PRESIGNED_SIGNATURE = "c0ffee" * 10 + "beef"  # what a presigned URL's X-Amz-Signature would be
PRESIGNED_TOKEN = "presigned-token-77d01e"  # and its X-Amz-Security-Token
SECRETS = [S3_SECRET, S3_TOKEN, HTTP_SECRET, MQTT_PASSWORD]
ROLE = "arn:aws:iam::123456789012:role/neo"
JOB_WAIT_S = 240.0
FAST_BENCH = BenchConfig(min_iterations=5, min_seconds=0.1, warmup_runs=1, warmup_seconds=0.0, max_seconds=10,
                         threads=1)


class Collected(logging.Handler):
    """Every record, formatted with its traceback, from every logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def request(name: str, model_uri: str, out_uri: str, runtime: int = 300) -> dict:
    return {"CompilationJobName": name, "RoleArn": ROLE,
            "InputConfig": {"S3Uri": model_uri, "Framework": "ONNX"},
            "OutputConfig": {"S3OutputLocation": out_uri, "TargetDevice": "ml_c5"},
            "StoppingCondition": {"MaxRuntimeInSeconds": runtime}}


def signed_post(transport: HttpTransport, operation: str, body: dict, secret: str = HTTP_SECRET,
                tamper: bool = False) -> tuple[int, dict]:
    data = json.dumps(body).encode()
    host, port = transport.url.removeprefix("http://").rsplit(":", 1)
    headers = sign(transport.url + "/", {"Content-Type": "application/x-amz-json-1.1",
                                         "X-Amz-Target": f"SageMaker.{operation}"},
                   data, HTTP_KEY_ID, secret, "us-east-1")
    if tamper:  # the right signature for another body
        data = data.replace(b"}", b', "MaxResults": 1}', 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/", body=data, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("secrets")
    state, out = root / "state", root / "out"
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(root / "model.onnx"))
    (root / "corrupt.onnx").write_bytes(b"\x0a\xff\xff" + os.urandom(64))
    presigned = ("https://127.0.0.1:9/bucket/model.tar.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                 f"&X-Amz-Credential={S3_KEY_ID}%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
                 f"&X-Amz-Security-Token={PRESIGNED_TOKEN}&X-Amz-Signature={PRESIGNED_SIGNATURE}")

    config = AgentConfig(
        state_dir=state, bench=FAST_BENCH,
        s3=S3Config(access_key_id=S3_KEY_ID, secret_access_key=S3_SECRET, session_token=S3_TOKEN),
        http_credentials={HTTP_KEY_ID: HTTP_SECRET},
        mqtt=MqttConfig(enabled=False, username="neo", password=MQTT_PASSWORD, thing_name=THING),
    )
    logs = Collected()
    root_logger = logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(logs)
    root_logger.setLevel(logging.DEBUG)
    agent = Agent(config).start()
    transport = HttpTransport(agent.api_for("http"), "127.0.0.1:0", credentials=config.http_credentials,
                              require_signature=True)
    transport.start()
    answers: list[object] = []
    try:
        for body in (request("tiny-ok", (root / "model.onnx").as_uri(), out.as_uri()),
                     request("corrupt", (root / "corrupt.onnx").as_uri(), out.as_uri()),
                     request("presigned", presigned, out.as_uri(), runtime=3)):
            status, answer = signed_post(transport, "CreateCompilationJob", body)
            assert status == 200, answer
        answers.append(signed_post(transport, "ListCompilationJobs", {}, secret="not-the-secret"))
        answers.append(signed_post(transport, "ListCompilationJobs", {}, tamper=True))
        deadline = time.monotonic() + JOB_WAIT_S
        jobs = {}
        while time.monotonic() < deadline:
            jobs = {name: signed_post(transport, "DescribeCompilationJob", {"CompilationJobName": name})[1]
                    for name in ("tiny-ok", "corrupt", "presigned")}
            if all(job["CompilationJobStatus"] in ("COMPLETED", "FAILED", "STOPPED") for job in jobs.values()):
                break
            time.sleep(0.5)
        answers.extend(jobs.values())
        answers.append(signed_post(transport, "ListCompilationJobs", {}))
    finally:
        transport.stop(timeout=5)
        agent.shutdown(timeout=30)
        root_logger.removeHandler(logs)
        root_logger.setLevel(old_level)
    files = {path: path.read_bytes() for base in (state, out) for path in sorted(base.rglob("*")) if path.is_file()}
    for path in [p for p in files if p.name.endswith(".tar.gz")]:  # the artifact: search what it holds
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                files[path / member.name] = archive.extractfile(member).read()
    return {"jobs": jobs, "files": files, "logs": "\n".join(logs.lines), "answers": json.dumps(answers),
            "state": state, "out": out}


def test_the_three_jobs_ended_as_expected(secret_run):
    jobs = secret_run["jobs"]
    assert jobs["tiny-ok"]["CompilationJobStatus"] == "COMPLETED", jobs["tiny-ok"]
    assert jobs["corrupt"]["FailureReason"].startswith("ClientError: InputConfiguration: Incompatible ONNX model")
    assert jobs["presigned"]["CompilationJobStatus"] == "FAILED"
    names = {path.name for path in secret_run["files"]}
    # What the search below covers: the job store, each job's spec and log, the artifact, its
    # metrics and its log in the output location (and the failed jobs' logs there).
    assert {"jobs.sqlite3", "spec.json", "job.log", "model-ml_c5.tar.gz", "model-ml_c5.metrics.json",
            "model-ml_c5.log", "corrupt-ml_c5.log", "model.so", "metadata.json", "metrics.json"} <= names, names


@pytest.mark.parametrize("secret", SECRETS, ids=["s3 secret key", "s3 session token", "http secret", "mqtt password"])
def test_no_secret_in_any_file_log_or_answer(secret_run, secret):
    needle = secret.encode()
    leaked = [str(path) for path, data in secret_run["files"].items() if needle in data]
    assert not leaked, f"{secret} is in {leaked}"
    assert secret not in secret_run["logs"], "in the agent's log"
    assert secret not in secret_run["answers"], "in an API answer"
    tally("Security: secrets searched for in every file, log record and answer of three real jobs", 1)


def test_a_presigned_urls_signature_stays_out_of_logs_and_failure_reasons(secret_run):
    """The request itself (the job record, spec.json) must keep the URL to fetch it; nothing else may."""
    reason = secret_run["jobs"]["presigned"]["FailureReason"]
    assert "127.0.0.1:9/bucket/model.tar.gz" in reason
    for secret in (PRESIGNED_SIGNATURE, PRESIGNED_TOKEN):
        assert secret not in reason and secret not in secret_run["logs"]
        for path, data in secret_run["files"].items():
            if path.suffix in (".log", ".json", ".so") and path.name != "spec.json":
                assert secret.encode() not in data, path


def test_a_refused_signature_does_not_give_away_the_expected_one(secret_run):
    answers = json.loads(secret_run["answers"])
    wrong_secret, tampered = answers[0], answers[1]
    assert wrong_secret[0] == 403 and wrong_secret[1]["__type"] == "InvalidSignatureException"
    assert tampered[0] == 403 and tampered[1]["__type"] == "InvalidSignatureException"
    for status, body in (wrong_secret, tampered):
        assert "Signature=" not in body["message"] and not any(len(word) == 64 for word in body["message"].split())


def test_the_state_directory_is_owner_only(secret_run):
    """Everything the agent keeps sits under a 0700 directory; the agent makes it so at every start.
    What a job's folder holds (its spec, its log, what the child unpacked and built) is owner-only
    too, whatever the agent's umask (this test runs under pytest's, 022 here)."""
    state = secret_run["state"]
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in state.rglob("*"):
        assert not stat.S_IMODE(path.lstat().st_mode) & 0o002, f"{path} is world-writable"
    in_jobs = [path for path in (state / "jobs").rglob("*") if not path.is_symlink()]
    assert any(path.name == "spec.json" for path in in_jobs) and any(path.name == "job.log" for path in in_jobs)
    for path in in_jobs:
        assert not stat.S_IMODE(path.lstat().st_mode) & 0o077, f"{path} is open to others: {path.lstat().st_mode:o}"


def test_an_open_state_directory_is_closed_at_start(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    agent = Agent(AgentConfig(state_dir=state))
    try:
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
    finally:
        agent.store.close()


def test_mqtt_allow_lists_refuse_with_access_denied_and_store_nothing(tmp_path):
    served = Served(tmp_path / "state", access=AccessPolicy(allowed_accounts=["123456789012"],
                                                             allowed_role_arns=[ROLE]))
    try:
        for role in ("arn:aws:iam::999999999999:role/neo", "arn:aws:iam::123456789012:role/other",
                     "arn:aws:iam::123456789012:user/neo", None):
            body = valid_body("allow-list")
            body["RoleArn"] = role
            code, message = mqtt_error(served.publish(json.dumps(body).encode()))
            assert code == "AccessDeniedException", message
        assert served.job_count() == 0
        body = valid_body("allow-list")
        body["RoleArn"] = ROLE
        topic, _ = served.publish(json.dumps(body).encode())
        assert topic == f"neo/{THING}/CreateCompilationJob/accepted" and served.job_count() == 1
        # Another thing's topic, and a Response Topic the agent will not answer on: silence, nothing stored.
        served.binding.handle_request("neo/other-thing/CreateCompilationJob", json.dumps(valid_body("x")).encode())
        served.binding.handle_request(f"neo/{THING}/CreateCompilationJob", json.dumps(valid_body("y")).encode(),
                                      response_topic=f"neo/{THING}/jobs/x/events")
        assert len(served.published) == 5 and served.job_count() == 1
    finally:
        served.stop()
    tally("Security: MQTT requests refused by the allow-lists or the topic scheme", 6)


def _with_file_uri(name: str, member: str) -> dict:
    body = valid_body(name)
    if member == "InputConfig.S3Uri":
        body["InputConfig"]["S3Uri"] = "file:///etc/neo-agent/model.tar.gz"
    else:
        body["OutputConfig"]["S3OutputLocation"] = "file:///var/lib/neo-agent/out/"
    return body


def test_file_uris_are_taken_only_from_the_channels_the_setting_names(tmp_path):
    """file:// reads and writes the agent user's files: by default only the HTTP endpoint's
    callers may name it; an MQTT caller gets a ValidationException naming the member."""
    served = Served(tmp_path / "state").start()
    try:
        for member in ("InputConfig.S3Uri", "OutputConfig.S3OutputLocation"):
            code, message = mqtt_error(served.publish(json.dumps(_with_file_uri("over-mqtt", member)).encode()))
            assert code == "ValidationException" and message.startswith(member) and "file_uri_channels" in message
        assert served.job_count() == 0
        for member in ("InputConfig.S3Uri", "OutputConfig.S3OutputLocation"):
            status, _, answer = served.post(json.dumps(_with_file_uri(f"over-http-{member[0].lower()}", member)).encode())
            assert status == 200, answer
        assert served.job_count() == 2
    finally:
        served.stop()
    opened = Served(tmp_path / "opened", file_uri_channels=["http", "mqtt"])
    try:
        topic, _ = opened.publish(json.dumps(_with_file_uri("allowed", "InputConfig.S3Uri")).encode())
        assert topic == f"neo/{THING}/CreateCompilationJob/accepted" and opened.job_count() == 1
    finally:
        opened.stop()
    with pytest.raises(ConfigError, match="file_uri_channels.*'bluetooth'"):
        AgentConfig(state_dir=tmp_path / "other", file_uri_channels=("http", "bluetooth"))
    tally("Security: file:// locations from a channel the file_uri_channels setting leaves out", 2)


def test_the_artifact_does_not_carry_a_presigned_urls_signature():
    """metadata.json holds the request, and the artifact goes wherever its owner sends it."""
    from types import SimpleNamespace

    from agent import pipeline
    from agent.jobs.job import Job

    presigned = f"https://bucket.s3.amazonaws.com/m/model.onnx?X-Amz-Security-Token={PRESIGNED_TOKEN}" \
                f"&X-Amz-Signature={PRESIGNED_SIGNATURE}"
    body = request("shared", presigned, "s3://bucket/out/")
    job = Job(name="shared", arn="arn", request=body)
    imported = SimpleNamespace(inputs=[], outputs=[], shapes={}, opset=17)
    metadata = json.dumps(pipeline._metadata(job, "ONNX", imported, {}, "model.so"))
    assert PRESIGNED_SIGNATURE not in metadata and PRESIGNED_TOKEN not in metadata
    assert '"S3Uri": "https://bucket.s3.amazonaws.com/m/model.onnx"' in metadata
    assert job.request["InputConfig"]["S3Uri"] == presigned  # the record itself keeps what it needs


def test_a_web_page_cannot_drive_the_loopback_endpoint(served):
    """A page may POST to 127.0.0.1 without asking (a "simple" request: no custom header), and may
    ask to send X-Amz-Target (a CORS preflight). The first lacks the operation, the second is
    never allowed; DNS rebinding is tests/transports/test_http_protocol.py's Host check."""
    host, port = served.http.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("OPTIONS", "/", headers={"Origin": "https://attacker.example", "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "x-amz-target,content-type"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 405 and not any(h.lower().startswith("access-control-") for h in response.headers)
    before = served.job_count()
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/", body=json.dumps(valid_body("csrf")), headers={"Content-Type": "text/plain",
                                                                              "Origin": "https://attacker.example"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert (response.status, answer["__type"]) == (400, "UnknownOperationException")
    assert served.job_count() == before
    tally("Security: cross-site requests from a web page to the loopback endpoint", 2)


def test_engine_workers_get_no_credentials_from_the_environment(monkeypatch):
    """The verify and benchmark workers run the compiled model and onnxruntime on the user's
    model: whatever credentials reached the compile child's environment stay out of theirs."""
    from agent.bench.engines import _child_env

    carried = {"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_SESSION_TOKEN": S3_TOKEN,
               "AWS_CONTAINER_AUTHORIZATION_TOKEN": "tes-token", "SVCUID": "ipc-token",
               "NEO_AGENT_HTTP_CREDENTIALS": f"{HTTP_KEY_ID}:{HTTP_SECRET}", "NEO_AGENT_MQTT_PASSWORD": MQTT_PASSWORD}
    for name, secret in carried.items():
        monkeypatch.setenv(name, secret)
    env = _child_env(threads=2)
    assert not set(carried) & set(env)
    assert env["TVM_NUM_THREADS"] == "2" and env["PATH"] == os.environ["PATH"]


def test_the_unit_hides_the_agents_processes_and_keeps_its_files_private():
    """What tests/service/test_systemd.py::test_the_unit_is_sandboxed leaves out: other users see
    neither the agent's processes nor (through /proc) their environment, and what it creates is
    its own."""
    from tests.service.test_systemd import unit_settings

    service = unit_settings()["Service"]
    assert service["ProtectProc"][-1] == "invisible" and service["UMask"][-1] == "0077"
    assert service["User"][-1] == "neo-agent" and service["NoNewPrivileges"][-1] == "yes"


PROBE = """
import socket, sys
from agent.runner.offline import isolate_network
print(isolate_network() if sys.argv[2] == "isolate" else "not asked")
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    print("connected")
except OSError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("isolate", [True, False])
def test_the_stages_that_read_the_model_reach_no_network(tmp_path, isolate):
    """What a model's parser bug could run, runs where agent.runner.offline puts prepare, compile,
    verify and benchmark: in its own user and network namespaces, where not even this machine's
    loopback answers (the control, without them, connects)."""
    import socket
    import subprocess
    import sys

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        probe = subprocess.run([sys.executable, "-c", PROBE, str(listener.getsockname()[1]),
                                "isolate" if isolate else "no"], capture_output=True, text=True, timeout=60)
    finally:
        listener.close()
    said = probe.stdout.splitlines()
    assert probe.returncode == 0, probe.stderr
    if isolate:
        assert said[0] == "isolated", said  # user namespaces are allowed on the machines this runs on
        assert said[1].startswith("refused:") and "unreachable" in said[1], said
    else:
        assert said == ["not asked", "connected"]


CONFINED_PROBE = """
import json, os, socket, subprocess, sys, tempfile
from pathlib import Path
from agent.runner.offline import confine_files
spec = json.loads(sys.argv[1])
print(confine_files(spec))
state, work = Path(spec["config"]["state_dir"]), Path(spec["workdir"])
def attempt(what, action):
    try:
        action()
        print(what, "done")
    except Exception as exc:
        print(what, "refused:", getattr(exc, "strerror", None) or exc)
attempt("read another job's model", lambda: (state / "jobs" / "other" / "work" / "model.onnx").read_bytes())
attempt("read the job store", lambda: (state / "jobs.sqlite3").read_bytes())
attempt("read a file elsewhere", lambda: Path(sys.argv[2]).read_bytes())
attempt("write a file elsewhere", lambda: (Path(sys.argv[2]).parent / "dropped").write_text("x"))
attempt("write in the work folder", lambda: (work / "artifact" / "model.so").write_text("x"))
attempt("write in the tuning database", lambda: (state / "tuning" / "records.json").write_text("x"))
attempt("append to the job's log", lambda: open(spec["log"], "a").write("a line"))
attempt("make a temporary file", lambda: print(tempfile.mkstemp()[1].startswith(str(work / "tmp")), end=" "))
attempt("read the system's files", lambda: Path("/etc/passwd").read_bytes())
attempt("run python with numpy", lambda: subprocess.run([sys.executable, "-c", "import numpy"], check=True))
attempt("connect over TCP", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[3])), timeout=5).close())
"""


def test_the_stages_that_read_the_model_read_and_write_only_what_they_need(tmp_path):
    """agent.runner.offline.confine_files, as the offline process runs it before reading the
    model: this job's work folder, log and the tuning database are its own; the rest of the
    agent's state directory (the job store, other jobs' models) and any file outside the
    system's and Python's trees are closed to it, as is TCP even without the network namespace
    (Landlock; the machines this runs on have it)."""
    import socket
    import subprocess
    import sys

    state = tmp_path / "state"
    work = state / "jobs" / "this" / "work"
    (work / "artifact").mkdir(parents=True)
    (state / "jobs" / "other" / "work").mkdir(parents=True)
    (state / "jobs" / "other" / "work" / "model.onnx").write_bytes(b"another user's model")
    (state / "jobs.sqlite3").write_bytes(b"records")
    (state / "jobs" / "this" / "job.log").write_text("")
    elsewhere = tmp_path / "elsewhere" / "credentials"
    elsewhere.parent.mkdir()
    elsewhere.write_text("[default]\naws_secret_access_key = x\n")
    spec = {"workdir": str(work), "log": str(state / "jobs" / "this" / "job.log"), "hide": [],
            "config": {"state_dir": str(state), "tuning": {"database": True}}}
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        probe = subprocess.run([sys.executable, "-c", CONFINED_PROBE, json.dumps(spec), str(elsewhere),
                                str(listener.getsockname()[1])], capture_output=True, text=True, timeout=60)
    finally:
        listener.close()
    assert probe.returncode == 0, probe.stderr
    said = probe.stdout.splitlines()
    assert said[0].startswith("confined (Landlock ABI "), said
    assert said[1:] == [
        "read another job's model refused: Permission denied",
        "read the job store refused: Permission denied",
        "read a file elsewhere refused: Permission denied",
        "write a file elsewhere refused: Permission denied",
        "write in the work folder done",
        "write in the tuning database done",
        "append to the job's log done",
        "True make a temporary file done",
        "read the system's files done",
        "run python with numpy done",
        "connect over TCP refused: Permission denied",
    ]
    assert not (tmp_path / "elsewhere" / "dropped").exists()


def test_landlock_rules_leave_out_the_hidden_paths_inside_a_tree(tmp_path):
    """A tree that holds a hidden path is granted entry by entry around it, down its ancestors."""
    from agent.runner import landlock

    etc = tmp_path / "etc"
    for folder in ("neo-agent", "ssl/private", "ssl/certs"):
        (etc / folder).mkdir(parents=True)
    (etc / "passwd").write_text("")
    (etc / "neo-agent" / "agent.toml").write_text("")
    rules = landlock.rules([etc, tmp_path / "absent"], [etc / "ssl" / "certs"],
                           [etc / "neo-agent", etc / "ssl" / "private"])
    assert rules == [(etc / "passwd", landlock.READ), (etc / "ssl" / "certs", landlock.READ),
                     (etc / "ssl" / "certs", landlock.WRITE)]


def test_real_jobs_read_their_models_offline(secret_run):
    """secret_run's jobs went through agent.runner.offline: the one that compiled says so in its
    metrics.json, and the corrupt model failed in it with the usual reason (the_three_jobs_ended_
    as_expected)."""
    files = secret_run["files"]
    metrics = json.loads(files[secret_run["out"] / "model-ml_c5.metrics.json"])
    assert metrics["sandbox"]["network"] == "isolated"
    assert metrics["sandbox"]["files"].startswith("confined (Landlock ABI "), metrics["sandbox"]
    logs = b"".join(data for path, data in files.items() if path.name == "job.log")
    assert logs.count(b"stages prepare to benchmark in process") == 2, "tiny-ok and corrupt; presigned never fetched"
    assert logs.count(b"network isolated, files confined") == 2
