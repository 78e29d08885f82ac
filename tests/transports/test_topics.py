"""The topic scheme and payloads (agent/transports/topics.py), the IoT Jobs document
(agent/transports/jobdoc.py) and the mqtt configuration section."""
from __future__ import annotations

import json

import pytest

from agent.config import AgentConfig, MqttConfig, default_thing_name
from agent.errors import AccessDeniedException, ConfigError, ValidationException
from agent.jobs.events import Event
from agent.transports import jobdoc, topics
from agent.transports.binding import AccessPolicy


def test_topics_of_a_thing():
    assert topics.request_topics("edge-1") == [f"neo/edge-1/{op}" for op in topics.OPERATIONS]
    assert topics.accepted_topic("edge-1", "StopCompilationJob") == "neo/edge-1/StopCompilationJob/accepted"
    assert topics.rejected_topic("edge-1", "StopCompilationJob") == "neo/edge-1/StopCompilationJob/rejected"
    assert topics.events_topic("edge-1", "job-1") == "neo/edge-1/jobs/job-1/events"
    assert topics.parse_request_topic("neo/edge-1/ListCompilationJobs") == ("edge-1", "ListCompilationJobs")
    for other in ("neo/edge-1/ListCompilationJobs/accepted", "neo/edge-1/Nope", "x/edge-1/ListCompilationJobs",
                  "neo/edge-1/jobs/j/events"):
        assert topics.parse_request_topic(other) is None
    with pytest.raises(ValueError):
        topics.check_thing_name("a/b")
    with pytest.raises(ValueError):
        topics.request_topic("edge-1", "CreateTrainingJob")


@pytest.mark.parametrize("topic, safe", [
    ("neo/edge-1/clients/c1/responses", True),
    ("my/own/inbox", True),
    ("neo/edge-2/CreateCompilationJob", False),
    ("neo/edge-1/StopCompilationJob/accepted", False),
    ("neo/edge-1/jobs/j/events", False),
    ("$aws/things/edge-1/jobs/get", False),
    ("a/+/b", False),
    ("", False),
])
def test_which_response_topics_the_agent_answers_on(topic, safe):
    assert topics.is_safe_response_topic(topic) is safe


def test_parse_request_takes_the_client_token_out():
    body, token = topics.parse_request(b'{"CompilationJobName": "j", "clientToken": "abc"}', 1024)
    assert body == {"CompilationJobName": "j"} and token == "abc"
    assert topics.parse_request(b"", 1024) == ({}, None)


@pytest.mark.parametrize("payload, code", [
    (b"x" * 1025, "ValidationException"),
    (b"{nope", "SerializationException"),
    (b'"a string"', "SerializationException"),
    (b'{"clientToken": 7}', "ValidationException"),
    (b'{"clientToken": "' + b"t" * 65 + b'"}', "ValidationException"),
])
def test_parse_request_refusals(payload, code):
    with pytest.raises(Exception) as caught:
        topics.parse_request(payload, 1024)
    assert caught.value.code == code


def test_answer_payloads():
    accepted = json.loads(topics.accepted_payload({"CompilationJobArn": "arn"}, "t1"))
    assert accepted == {"CompilationJobArn": "arn", "clientToken": "t1"}
    rejected = json.loads(topics.rejected_payload(ValidationException("bad"), "t1"))
    assert rejected == {"clientToken": "t1", "error": {"code": "ValidationException", "message": "bad"}}
    assert topics.parse_answer(topics.rejected_payload(ValidationException("bad"), None)) == (
        {}, {"code": "ValidationException", "message": "bad"})
    assert topics.parse_answer(b'{"CompilationJobArn": "arn", "clientToken": "t"}') == ({"CompilationJobArn": "arn"}, None)


def test_event_payload_round_trip_and_summary():
    metrics = {"tvm": {"latency_ms": {"p50": 2.0, "p99": 3.0}, "throughput_per_s": 400.0, "version": "0.27"},
               "onnxruntime": {"latency_ms": {"p50": 1.0}}, "speedup_vs_onnxruntime": 0.5,
               "verification": {"passed": True, "max_abs_error": 1e-6, "outputs": [{"name": "x"}]},
               "device": {"cpu": "big"}, "compile_seconds": 3.2}
    summary = topics.metrics_summary(metrics, "s3://b/k.tar.gz", "ab12")
    assert summary["artifactUri"] == "s3://b/k.tar.gz" and summary["artifactDigest"] == "ab12"
    assert summary["metrics"]["tvm"] == {"latency_ms": {"p50": 2.0, "p99": 3.0}, "throughput_per_s": 400.0}
    assert summary["metrics"]["verification"] == {"passed": True, "max_abs_error": 1e-6}
    assert "device" not in summary["metrics"]
    event = Event(kind="status", job_name="j", status="COMPLETED", stage="upload", percent=100.0, time=5.0)
    body = json.loads(topics.event_payload(event, 9, summary))
    assert body == {"seq": 9, "kind": "status", "jobName": "j", "status": "COMPLETED", "stage": "upload",
                    "percent": 100.0, "timestamp": 5.0, "summary": summary}
    assert topics.is_final(body)
    again = topics.event_from_payload(body)
    assert (again.kind, again.job_name, again.status, again.metrics) == ("status", "j", "COMPLETED", summary["metrics"])


def test_access_policy():
    policy = AccessPolicy(["111111111111"], [])
    policy.check("CreateCompilationJob", {"RoleArn": "arn:aws:iam::111111111111:role/x"})
    policy.check("DescribeCompilationJob", {})
    for role in ("arn:aws:iam::222222222222:role/x", None, "arn:aws:iam::111111111111:user/x"):
        with pytest.raises(AccessDeniedException):
            policy.check("CreateCompilationJob", {"RoleArn": role})
    AccessPolicy().check("CreateCompilationJob", {})  # no lists: everything goes to the API's validation


# --- the IoT Jobs document ---------------------------------------------------------------------
def test_job_document_and_create_job_command(tmp_path):
    request = {"CompilationJobName": "fleet-1", "RoleArn": "arn:aws:iam::123456789012:role/neo",
               "StoppingCondition": {"MaxRuntimeInSeconds": 900}}
    document = jobdoc.build_document(request)
    assert document == {"operation": "CreateCompilationJob",
                        "request": {"RoleArn": request["RoleArn"], "StoppingCondition": {"MaxRuntimeInSeconds": 900}}}
    assert jobdoc.in_progress_timeout_minutes(request) == 15 + jobdoc.TIMEOUT_MARGIN_MIN
    assert jobdoc.in_progress_timeout_minutes({"StoppingCondition": {"MaxRuntimeInSeconds": 28 * 86400}}) == 10080
    command = jobdoc.create_job_command("fleet-1", "arn:aws:iot:us-east-1:123456789012:thinggroup/cams",
                                        "/tmp/d.json", 25)
    assert jobdoc.command_line(command) == (
        "aws iot create-job --job-id fleet-1 --targets arn:aws:iot:us-east-1:123456789012:thinggroup/cams "
        "--document file:///tmp/d.json --timeout-config inProgressTimeoutInMinutes=25")
    with pytest.raises(ValidationException):
        jobdoc.create_job_command("fleet-1", "cams", "/tmp/d.json", 25)
    with pytest.raises(ValidationException):
        jobdoc.build_document({"Tags": [{"Key": "k", "Value": "v" * 40000}]})


def test_the_device_side_reads_the_document():
    iotjobs = pytest.importorskip("agent.transports.iotjobs")
    document = jobdoc.build_document({"CompilationJobName": "ignored", "RoleArn": "r"})
    assert iotjobs.request_from_document(json.loads(jobdoc.document_bytes(document)), "iotjob-x") == {
        "RoleArn": "r", "CompilationJobName": "iotjob-x"}


# --- configuration ------------------------------------------------------------------------------
def test_mqtt_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NEO_AGENT_MQTT_ENABLED", "true")
    monkeypatch.setenv("NEO_AGENT_MQTT_PORT", "8883")
    monkeypatch.setenv("NEO_AGENT_MQTT_PROTOCOL", "3.1.1")
    monkeypatch.setenv("NEO_AGENT_MQTT_ALLOWED_ACCOUNTS", "111111111111, 222222222222")
    config = AgentConfig.load(state_dir=tmp_path)
    assert config.mqtt.enabled and config.mqtt.port == 8883 and config.mqtt.protocol == "3.1.1"
    assert config.mqtt.allowed_accounts == ("111111111111", "222222222222")
    assert "mqtt" not in config.to_child()  # the compile child never sees the broker password


@pytest.mark.parametrize("changes, key", [
    ({"port": 0}, "mqtt.port"),
    ({"protocol": "4"}, "mqtt.protocol"),
    ({"thing_name": "a/b"}, "mqtt.thing_name"),
    ({"password": "p"}, "mqtt.password"),
    ({"tls_cert": "/nonexistent.pem", "tls_key": "/nonexistent.key"}, "mqtt.tls_cert"),
    ({"tls_cert": "/etc/hostname"}, "mqtt.tls_cert"),
    ({"max_payload_bytes": 10}, "mqtt.max_payload_bytes"),
    ({"allowed_accounts": ("12",)}, "mqtt.allowed_accounts"),
    ({"allowed_role_arns": ("arn:aws:iam::123456789012:user/x",)}, "mqtt.allowed_role_arns"),
])
def test_bad_mqtt_settings_name_the_key(changes, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        MqttConfig(**changes).validate()


def test_default_thing_name_is_a_valid_thing_name():
    assert topics.check_thing_name(default_thing_name())
