"""A stand-in for the AWS IoT Jobs service, speaking its MQTT API over a real broker.

AWS IoT itself cannot run here, so the tests run this instead: another MQTT client on the
same broker that answers what a device publishes under `$aws/things/{thing}/jobs/...` with
the payloads AWS sends (awsiotsdk's `awsiot/iotjobs.py` shapes), and publishes the
notifications. It keeps, per thing, the job executions with their status, statusDetails,
versionNumber and executionNumber, and applies the service's rules that a device can
observe: IN_PROGRESS executions come before QUEUED ones, terminal executions refuse updates
(TerminalStateReached), `expectedVersion` must match (VersionMismatch), statusDetails keys
and values are checked, a canceled IN_PROGRESS execution needs `force`.

Mosquitto does not match `$`-topics with filters that start with a wildcard, so the
stand-in subscribes to each thing's topics by their explicit `$aws/things/{thing}/jobs/`
prefix.

    with JobsService(host, port, things=["thing-1"]) as jobs:
        jobs.add_job("thing-1", "job-1", {"operation": "CreateCompilationJob", "request": {...}})
        execution = jobs.wait_for(lambda: jobs.execution("thing-1", "job-1").status == "SUCCEEDED")
"""
from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
import unicodedata
from typing import Any, Callable

import paho.mqtt.client as mqtt

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "REMOVED", "CANCELED"}
DEVICE_MAY_SET = {"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"}
DETAIL_KEY = re.compile(r"^[a-zA-Z0-9:_-]+$")
DETAIL_VALUE_MAX = 1024  # the Jobs MQTT API's limit (the HTTP model's DetailsValue has no max, only [^\p{C}]+)
CONNECT_TIMEOUT_S = 10.0


@dataclasses.dataclass
class Execution:
    job_id: str
    thing: str
    document: dict
    status: str = "QUEUED"
    status_details: dict = dataclasses.field(default_factory=dict)
    version: int = 1
    execution_number: int = 1
    queued_at: int = 0
    started_at: int | None = None
    last_updated_at: int = 0
    step_timeout: int | None = None
    history: list = dataclasses.field(default_factory=list)  # (status, statusDetails) after each change

    def state(self) -> dict:
        return {"status": self.status, "statusDetails": dict(self.status_details), "versionNumber": self.version}

    def data(self, with_document: bool = True) -> dict:
        body = {
            "jobId": self.job_id, "thingName": self.thing, "status": self.status,
            "statusDetails": dict(self.status_details), "queuedAt": self.queued_at,
            "lastUpdatedAt": self.last_updated_at, "versionNumber": self.version,
            "executionNumber": self.execution_number,
        }
        if self.started_at is not None:
            body["startedAt"] = self.started_at
        if with_document:
            body["jobDocument"] = self.document
        return body

    def summary(self) -> dict:
        body = self.data(with_document=False)
        return {k: body[k] for k in ("jobId", "queuedAt", "startedAt", "lastUpdatedAt", "versionNumber",
                                     "executionNumber") if k in body}


class JobsService:
    """The Jobs MQTT API for `things`, over the broker at host:port (a plain listener)."""

    def __init__(self, host: str, port: int, things: list[str]):
        self.host, self.port, self.things = host, port, list(things)
        self.executions: dict[tuple[str, str], Execution] = {}
        self.requests: list[tuple[str, dict]] = []  # every request a device made, in order
        self._lock = threading.Condition()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="iot-jobs-stand-in",
                                   protocol=mqtt.MQTTv311)
        self._client.on_message = self._on_message
        self._connected = threading.Event()
        self._client.on_connect = lambda *a: self._connected.set()

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> "JobsService":
        self._client.connect(self.host, self.port)
        self._client.loop_start()
        if not self._connected.wait(CONNECT_TIMEOUT_S):
            raise RuntimeError("the Jobs stand-in could not connect to the broker")
        for thing in self.things:
            base = f"$aws/things/{thing}/jobs"
            for topic in (f"{base}/start-next", f"{base}/get", f"{base}/+/get", f"{base}/+/update"):
                result, mid = self._client.subscribe(topic, qos=1)
                assert result == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.2)  # let the SUBACKs land before a device publishes
        return self

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def __enter__(self) -> "JobsService":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what an operator does (the control plane) ----------------------------------------
    def add_job(self, thing: str, job_id: str, document: Any, execution_number: int = 1) -> Execution:
        """CreateJob for one thing: the execution is QUEUED and the device is notified."""
        with self._lock:
            now = _now()
            execution = Execution(job_id, thing, document, queued_at=now, last_updated_at=now,
                                  execution_number=execution_number)
            self.executions[(thing, job_id)] = execution
            self._notify(thing)
            self._lock.notify_all()
            return execution

    def cancel(self, thing: str, job_id: str, force: bool = False, notify: bool = True) -> None:
        """CancelJobExecution: QUEUED always; IN_PROGRESS only with force, as AWS has it.

        notify=False: the notifications are lost on the way (the device must find out itself).
        """
        with self._lock:
            execution = self.executions[(thing, job_id)]
            if execution.status == "IN_PROGRESS" and not force:
                raise ValueError("an IN_PROGRESS execution is canceled only with force")
            self._set(execution, "CANCELED", execution.status_details)
            if notify:
                self._notify(thing)

    def remove(self, thing: str, job_id: str) -> None:
        """DeleteJobExecution / DeleteJob: the execution is gone."""
        with self._lock:
            del self.executions[(thing, job_id)]
            self._notify(thing)

    def notify_next(self, thing: str) -> None:
        """Publish NextJobExecutionChanged again (AWS may deliver a notification twice)."""
        with self._lock:
            self._publish(f"$aws/things/{thing}/jobs/notify-next", self._next_body(thing))

    def execution(self, thing: str, job_id: str) -> Execution:
        with self._lock:
            return dataclasses.replace(self.executions[(thing, job_id)])

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Wait until predicate() is truthy (re-checked on every change, and every 0.2 s)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                try:
                    value = predicate()
                except KeyError:
                    value = None
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the Jobs stand-in never saw that within {timeout} s; "
                                         f"executions: {self.executions}")
                self._lock.wait(min(left, 0.2))

    # --- the device side of the API -------------------------------------------------------
    def _on_message(self, client, userdata, message) -> None:
        parts = message.topic.split("/")
        thing, tail = parts[2], parts[4:]
        try:
            request = json.loads(message.payload or b"{}")
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            return self._reject(message.topic, {}, "InvalidJson", "the payload is not a JSON object")
        with self._lock:
            self.requests.append((message.topic, request))
            if tail == ["start-next"]:
                self._start_next(message.topic, thing, request)
            elif tail == ["get"]:
                self._get_pending(message.topic, thing, request)
            elif len(tail) == 2 and tail[1] == "get":
                self._describe(message.topic, thing, tail[0], request)
            elif len(tail) == 2 and tail[1] == "update":
                self._update(message.topic, thing, tail[0], request)
            self._lock.notify_all()

    def _start_next(self, topic: str, thing: str, request: dict) -> None:
        execution = self._next(thing)
        answer: dict[str, Any] = {}
        if execution is not None:
            if execution.status == "QUEUED":
                execution.started_at = _now()
                self._set(execution, "IN_PROGRESS", request.get("statusDetails") or {})
                execution.step_timeout = request.get("stepTimeoutInMinutes")
            answer["execution"] = execution.data()
        self._accept(topic, request, answer)

    def _get_pending(self, topic: str, thing: str, request: dict) -> None:
        mine = [e for e in self.executions.values() if e.thing == thing]
        self._accept(topic, request, {
            "inProgressJobs": [e.summary() for e in mine if e.status == "IN_PROGRESS"],
            "queuedJobs": [e.summary() for e in mine if e.status == "QUEUED"],
        })

    def _describe(self, topic: str, thing: str, job_id: str, request: dict) -> None:
        execution = self._next(thing) if job_id == "$next" else self.executions.get((thing, job_id))
        if execution is None:
            return self._reject(topic, request, "ResourceNotFound", f"Job execution {job_id} not found")
        self._accept(topic, request, {"execution": execution.data(request.get("includeJobDocument", True))})

    def _update(self, topic: str, thing: str, job_id: str, request: dict) -> None:
        execution = self.executions.get((thing, job_id))
        if execution is None:
            return self._reject(topic, request, "ResourceNotFound", f"Job execution {job_id} not found")
        if execution.status in TERMINAL:
            return self._reject(topic, request, "TerminalStateReached",
                                f"Job execution is in terminal state {execution.status}", execution)
        expected = request.get("expectedVersion")
        if expected is not None and int(expected) != execution.version:
            return self._reject(topic, request, "VersionMismatch",
                                f"expected version {expected}, current version {execution.version}", execution)
        status = request.get("status")
        if status not in DEVICE_MAY_SET:
            return self._reject(topic, request, "InvalidStateTransition", f"cannot set status {status!r}",
                                execution)
        details = request.get("statusDetails")
        problem = _check_details(details) if details is not None else ""
        if problem:
            return self._reject(topic, request, "InvalidRequest", problem)
        step = request.get("stepTimeoutInMinutes")
        if step is not None and not (step == -1 or 1 <= step <= 10080):
            return self._reject(topic, request, "InvalidRequest", f"stepTimeoutInMinutes {step} out of range")
        if step is not None:
            execution.step_timeout = step
        if execution.started_at is None and status == "IN_PROGRESS":
            execution.started_at = _now()
        self._set(execution, status, details if details is not None else execution.status_details)
        answer: dict[str, Any] = {}
        if request.get("includeJobExecutionState"):
            answer["executionState"] = execution.state()
        if request.get("includeJobDocument"):
            answer["jobDocument"] = execution.document
        self._accept(topic, request, answer)
        if status in TERMINAL:
            self._notify(thing)

    # --- helpers --------------------------------------------------------------------------
    def _set(self, execution: Execution, status: str, details: dict) -> None:
        execution.status = status
        execution.status_details = dict(details)
        execution.version += 1
        execution.last_updated_at = _now()
        execution.history.append((status, dict(details)))
        self._lock.notify_all()

    def _next(self, thing: str) -> Execution | None:
        pending = [e for e in self.executions.values() if e.thing == thing and e.status in ("IN_PROGRESS", "QUEUED")]
        pending.sort(key=lambda e: (e.status != "IN_PROGRESS", e.queued_at))
        return pending[0] if pending else None

    def _next_body(self, thing: str) -> dict:
        execution = self._next(thing)
        body: dict[str, Any] = {"timestamp": _now()}
        if execution is not None:
            body["execution"] = execution.data()
        return body

    def _notify(self, thing: str) -> None:
        """JobExecutionsChanged and NextJobExecutionChanged, as AWS sends them on any change."""
        mine = [e for e in self.executions.values() if e.thing == thing]
        jobs = {status: [e.summary() for e in mine if e.status == status] for status in ("IN_PROGRESS", "QUEUED")}
        self._publish(f"$aws/things/{thing}/jobs/notify",
                      {"timestamp": _now(), "jobs": {k: v for k, v in jobs.items() if v}})
        self._publish(f"$aws/things/{thing}/jobs/notify-next", self._next_body(thing))

    def _accept(self, topic: str, request: dict, answer: dict) -> None:
        answer["timestamp"] = _now()
        if "clientToken" in request:
            answer["clientToken"] = request["clientToken"]
        self._publish(f"{topic}/accepted", answer)

    def _reject(self, topic: str, request: dict, code: str, message: str, execution: Execution | None = None) -> None:
        answer: dict[str, Any] = {"code": code, "message": message, "timestamp": _now()}
        if "clientToken" in request:
            answer["clientToken"] = request["clientToken"]
        if execution is not None:
            answer["executionState"] = execution.state()
        self._publish(f"{topic}/rejected", answer)

    def _publish(self, topic: str, body: dict) -> None:
        self._client.publish(topic, json.dumps(body), qos=1)


def _check_details(details: Any) -> str:
    if not isinstance(details, dict):
        return "statusDetails must be a map"
    for key, value in details.items():
        if not (1 <= len(key) <= 128 and DETAIL_KEY.match(key)):
            return f"statusDetails key {key!r} does not match [a-zA-Z0-9:_-]+"
        if not isinstance(value, str) or not value or len(value) > DETAIL_VALUE_MAX:
            return f"statusDetails value of {key!r} must be a string of 1 to {DETAIL_VALUE_MAX} characters"
        if any(unicodedata.category(ch).startswith("C") for ch in value):
            return f"statusDetails value of {key!r} must not hold control characters ([^\\p{{C}}]+)"
    return ""


def _now() -> int:
    return int(time.time())
