"""The agent's MQTT topics and payloads, shared by every MQTT-based transport.

Plain MQTT (paho, agent/transports/mqtt.py) and AWS IoT Core (awsiotsdk) speak the same
scheme, so a client works against either. This module knows topics and JSON only: no
connection, no MQTT library.

    topic                                     from    payload
    neo/{thing}/{Operation}                   client  the operation's SageMaker JSON body, plus an
                                                      optional "clientToken" (removed before the API)
    neo/{thing}/{Operation}/accepted          agent   the API's answer body + "clientToken"
    neo/{thing}/{Operation}/rejected          agent   {"clientToken", "error": {"code", "message"}}
    (the request's MQTT 5 Response Topic)     agent   the answer body, or {"error": {...}}; with the
                                                      request's Correlation Data, "clientToken" echoed
    neo/{thing}/jobs/{jobName}/events         agent   job events (see `event_payload`)

{Operation} is one of OPERATIONS. Everything is QoS 1. An MQTT 3.1.1 client (which has no
Response Topic) subscribes to accepted/rejected before it publishes and matches answers by
the clientToken it chose (AWS IoT's shadow and jobs convention); an MQTT 5 request that carries
a Response Topic is answered there only, with its Correlation Data, and nothing goes to
accepted/rejected. `client_response_topic` is the suggested Response Topic for MQTT 5 clients.

Events of one job, in order: a "status" event for each status change (STARTING, INPROGRESS,
..., then COMPLETED, FAILED or STOPPED), "progress" events for each stage and percent, and
"deleted" when DeleteCompilationJob removes the record. The COMPLETED event carries the
metrics summary. Every event has `seq`, increasing per job (across agent restarts, and across
a delete and a new job of the same name), because QoS 1 and the agent's outbox deliver *at
least* once: a client keeps the highest seq it has seen per job and drops any event whose seq
is not higher. That way it sees each status, the final one included, exactly once. Progress
events are best-effort (dropped while the agent is offline); status and deleted events are
kept in the agent's outbox until the broker acknowledges them.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any

from agent.errors import ApiError, SerializationException, ValidationException
from agent.jobs.events import Event

PREFIX = "neo"
OPERATIONS = (
    "CreateCompilationJob",
    "DescribeCompilationJob",
    "ListCompilationJobs",
    "StopCompilationJob",
    "DeleteCompilationJob",
)
QOS = 1
CLIENT_TOKEN = "clientToken"
CLIENT_TOKEN_MAX = 64  # AWS IoT's clientToken limit
TERMINAL_STATUSES = ("COMPLETED", "FAILED", "STOPPED")
THING_NAME = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")  # AWS IoT's thing-name rule; no MQTT wildcards or "/"
WILDCARDS = ("+", "#")



@dataclasses.dataclass(frozen=True)
class Incoming:
    """A received PUBLISH, as much of it as the bindings need, whichever MQTT client read it."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None

# --- topics ---------------------------------------------------------------------------
def check_thing_name(thing: str) -> str:
    if not isinstance(thing, str) or not THING_NAME.match(thing):
        raise ValueError(f"not a thing name (1-128 characters of [a-zA-Z0-9:_-]): {thing!r}")
    return thing


def request_topic(thing: str, operation: str) -> str:
    if operation not in OPERATIONS:
        raise ValueError(f"not an operation: {operation!r}")
    return f"{PREFIX}/{thing}/{operation}"


def accepted_topic(thing: str, operation: str) -> str:
    return request_topic(thing, operation) + "/accepted"


def rejected_topic(thing: str, operation: str) -> str:
    return request_topic(thing, operation) + "/rejected"


def request_topics(thing: str) -> list[str]:
    """What an agent subscribes to: its own thing's five request topics, nothing wider."""
    return [request_topic(thing, op) for op in OPERATIONS]


def answer_filters(thing: str) -> list[str]:
    """What an MQTT 3.1.1 client subscribes to for answers from `thing`."""
    return [f"{PREFIX}/{thing}/+/accepted", f"{PREFIX}/{thing}/+/rejected"]


def events_topic(thing: str, job_name: str) -> str:
    return f"{PREFIX}/{thing}/jobs/{job_name}/events"


def events_filter(thing: str) -> str:
    """Every job's events on `thing`."""
    return f"{PREFIX}/{thing}/jobs/+/events"


def client_response_topic(thing: str, client_id: str) -> str:
    """A Response Topic for an MQTT 5 client; under the thing, so one IoT policy covers it."""
    return f"{PREFIX}/{thing}/clients/{client_id}/responses"


def parse_request_topic(topic: str) -> tuple[str, str] | None:
    """(thing, operation) of a request topic, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == PREFIX and parts[2] in OPERATIONS and THING_NAME.match(parts[1]):
        return parts[1], parts[2]
    return None


def is_safe_response_topic(topic: str | None) -> bool:
    """Whether the agent may publish an answer to a requester-chosen MQTT 5 Response Topic.

    Not a wildcard, not a `$` system topic, and not a request, answer or event topic of this
    scheme: otherwise a requester could make the agent publish requests to another device or
    forge job events in the agent's name.
    """
    if not topic or any(w in topic for w in WILDCARDS) or topic.startswith("$"):
        return False
    parts = topic.split("/")
    if parts[0] != PREFIX:
        return True
    if len(parts) >= 3 and parts[2] in OPERATIONS:
        return False
    return not (len(parts) >= 3 and parts[2] == "jobs")


# --- requests and answers ----------------------------------------------------------------
def parse_request(payload: bytes, max_bytes: int) -> tuple[dict[str, Any], str | None]:
    """(the API body, the clientToken) of a request payload.

    The size is checked before anything is parsed, so a huge payload costs nothing. An empty
    payload is an empty body (ListCompilationJobs needs none). Raises ValidationException
    (too large, bad clientToken) or SerializationException (not a JSON object).
    """
    if len(payload) > max_bytes:
        raise ValidationException(
            f"Request payload is {len(payload)} bytes; this device accepts at most {max_bytes} bytes."
        )
    if not payload.strip():
        return {}, None
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SerializationException(f"Request payload is not valid JSON: {exc}") from None
    except RecursionError:  # json's decoder recurses per level of nesting
        raise SerializationException("Request payload is not valid JSON: it nests too deeply.") from None
    if not isinstance(body, dict):
        raise SerializationException(f"Request payload must be a JSON object, not {type(body).__name__}.")
    token = body.pop(CLIENT_TOKEN, None)
    if token is not None and not (isinstance(token, str) and 1 <= len(token) <= CLIENT_TOKEN_MAX):
        raise ValidationException(f"{CLIENT_TOKEN} must be a string of 1 to {CLIENT_TOKEN_MAX} characters.")
    return body, token


def accepted_payload(answer: dict[str, Any], client_token: str | None) -> bytes:
    """The API's answer body, plus the request's clientToken when it had one."""
    body = dict(answer)
    if client_token is not None:
        body[CLIENT_TOKEN] = client_token
    return _dumps(body)


def rejected_payload(error: ApiError, client_token: str | None) -> bytes:
    """{"clientToken", "error": {"code", "message"}}; code is the SageMaker error name."""
    return _dumps({CLIENT_TOKEN: client_token, "error": {"code": error.code, "message": error.message}})


def parse_answer(payload: bytes) -> tuple[dict[str, Any], dict[str, str] | None]:
    """(body without clientToken, error or None) of an accepted, rejected or MQTT 5 answer."""
    body = json.loads(payload or b"{}")
    body.pop(CLIENT_TOKEN, None)
    error = body.get("error")
    if isinstance(error, dict) and "code" in error:
        return {}, {"code": str(error["code"]), "message": str(error.get("message", ""))}
    return body, None


# --- events ---------------------------------------------------------------------------------
SUMMARY_ENGINE_KEYS = ("latency_ms", "throughput_per_s", "first_inference_ms", "peak_rss_mb")
SUMMARY_VERIFICATION_KEYS = ("passed", "max_abs_error", "max_rel_error")


def metrics_summary(metrics: dict[str, Any] | None, artifact_uri: str = "", artifact_digest: str = "") -> dict[str, Any]:
    """The COMPLETED event's summary: the artifact and a projection of metrics.json.

    `metrics` keeps metrics.json's own key names (a contract, see agent/metrics.py), so
    agent.report.results_table renders it as it renders the full file: both engines'
    latencies, throughput, first inference, peak RSS, the speedup, the verification verdict.
    About 1 KiB, far under any broker's payload limit.
    """
    metrics = metrics or {}
    projected: dict[str, Any] = {}
    for engine in ("tvm", "onnxruntime", "reference"):
        if isinstance(metrics.get(engine), dict):
            projected[engine] = {k: metrics[engine][k] for k in SUMMARY_ENGINE_KEYS if k in metrics[engine]}
    if isinstance(metrics.get("verification"), dict):
        projected["verification"] = {
            k: metrics["verification"][k] for k in SUMMARY_VERIFICATION_KEYS if k in metrics["verification"]
        }
    for key in ("speedup_vs_onnxruntime", "speedup_vs_reference", "reference_engine", "framework",
                "compile_seconds", "threads", "tuned"):
        if key in metrics:
            projected[key] = metrics[key]
    summary: dict[str, Any] = {"metrics": projected}
    if artifact_uri:
        summary["artifactUri"] = artifact_uri
    if artifact_digest:
        summary["artifactDigest"] = artifact_digest
    return summary


def event_payload(event: Event, seq: int, summary: dict[str, Any] | None = None) -> bytes:
    """One job event:

        {"seq": 7, "kind": "status"|"progress"|"deleted", "jobName": "...", "status": "INPROGRESS",
         "stage": "compile", "percent": 15.0, "timestamp": 1795609563.2,
         "failureReason": "ClientError: ..."   (FAILED only),
         "summary": {"artifactUri", "artifactDigest", "metrics": {...}}   (COMPLETED only)}
    """
    body: dict[str, Any] = {
        "seq": seq,
        "kind": event.kind,
        "jobName": event.job_name,
        "status": event.status,
        "stage": event.stage,
        "percent": event.percent,
        "timestamp": event.time or time.time(),
    }
    if event.failure_reason:
        body["failureReason"] = event.failure_reason
    if summary is not None:
        body["summary"] = summary
    return _dumps(body)


def event_from_payload(body: dict[str, Any]) -> Event:
    """A received event as the agent's own Event, for agent.report.ProgressPrinter."""
    return Event(
        kind=str(body.get("kind", "")),
        job_name=str(body.get("jobName", "")),
        status=str(body.get("status", "")),
        stage=str(body.get("stage", "")),
        percent=float(body.get("percent") or 0.0),
        failure_reason=str(body.get("failureReason", "")),
        metrics=(body.get("summary") or {}).get("metrics"),
        time=float(body.get("timestamp") or 0.0),
    )


def is_final(body: dict[str, Any]) -> bool:
    """Whether an event ends the job's story: a terminal status, or the record deleted."""
    return body.get("kind") == "deleted" or (body.get("kind") == "status" and body.get("status") in TERMINAL_STATUSES)


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), default=str).encode()
