"""AWS IoT Jobs: compilation jobs delivered as IoT job executions, on the IoT Core connection.

An operator creates an IoT job whose document is a CreateCompilationJob request (written by
`neo-agent fleet-job`, agent/transports/jobdoc.py); each targeted thing's agent compiles it
and reports back through the execution's status:

    {"operation": "CreateCompilationJob",
     "request": {...CreateCompilationJob's body, without CompilationJobName...}}

The compilation job is named after the IoT job, `iotjob-<job id, sanitized>-<8 hex of its
hash>` (`compilation_job_name`), so one execution is one compilation job however often it
is announced. A CompilationJobName in the document is refused unless it is that name.

One execution at a time, as the IoT Device Client does; the others wait QUEUED at IoT Jobs.

    start / reconnect / notify-next ──> start-next ──accepted {execution}──> record it (SQLite)
        bad document or refused request ──> FAILED    {FailureReason: "ValidationException: ..."}
        compile started                 ──> IN_PROGRESS {stage, percent, ...}, stepTimeoutInMinutes
        progress (a new stage, or every jobs_progress_interval_s) ──> IN_PROGRESS {stage, percent}
        COMPLETED                       ──> SUCCEEDED {CompilationJobArn, S3ModelArtifacts, p50s, speedup}
                                            (TVM beside the Framework's reference: onnxruntime, torch, LiteRT)
        FAILED / STOPPED                ──> FAILED    {FailureReason}
    then start-next again for the next execution.

Cancellation: IoT Jobs tells a device nothing directly. The agent learns it when notify-next
or notify stops naming its execution, when an update is rejected (TerminalStateReached,
ResourceNotFound), or from a DescribeJobExecution it makes every CHECK_INTERVAL_S. An
execution found CANCELED, REMOVED or TIMED_OUT has its compile stopped (StopCompilationJob)
and nothing more is reported for it.

Restarts: an execution's final status is recorded before it is sent and forgotten only once
IoT Jobs accepted it (agent.transports.iotjobs_state). A compile that was running when the
agent died is FAILED by the runner's recovery (ServerError: AgentRestart) and reported FAILED
with that reason; a queued one runs after the restart and is reported as usual.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import math
import queue
import re
import threading
import time
import unicodedata
import uuid
from typing import Any

from agent.errors import ApiError, ResourceInUse, ResourceNotFound, ValidationException
from agent.jobs.events import Event
from agent.transports.iotcore import IotCoreConnection
from agent.transports.topics import Incoming
from agent.transports.jobdoc import OPERATION
from agent.transports.iotjobs_state import DONE, OWED, ExecutionLedger, ExecutionRecord

log = logging.getLogger(__name__)

NAME_PREFIX = "iotjob"
NAME_ID_PART_MAX = 46  # "iotjob-" + 46 + "-" + 8 hex = 62, within Neo's 63
DETAIL_VALUE_MAX = 1024  # statusDetails values: 1..1024 characters, no control characters
STEP_TIMEOUT_MAX_MIN = 10080  # stepTimeoutInMinutes' upper bound (7 days)
REQUEST_TIMEOUT_S = 30.0  # for an accepted/rejected answer
RETRY_S = 30.0  # an unanswered start-next or final update is tried again this often
CHECK_INTERVAL_S = 60.0  # DescribeJobExecution of the running execution, in case a notice was lost
STAGE_GAP_S = 1.0  # a new stage is reported at once, but not more often than this
TICK_S = 1.0
PENDING = ("QUEUED", "IN_PROGRESS")
GONE = ("TerminalStateReached", "ResourceNotFound")


def compilation_job_name(job_id: str, execution_number: int = 1) -> str:
    """The compilation job for an IoT job execution, within ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$.

    The hash keeps apart ids that sanitizing or truncating would merge ("a_b" and "a-b", and
    "Job" and "job", as compilation job names are unique regardless of case). A retried
    execution (executionNumber > 1) gets a name of its own.
    """
    key = job_id if execution_number <= 1 else f"{job_id}#{execution_number}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    clean = re.sub(r"[^a-zA-Z0-9]+", "-", job_id).strip("-")[:NAME_ID_PART_MAX].strip("-")
    return "-".join(filter(None, (NAME_PREFIX, clean, digest)))


def request_from_document(document: Any, name: str) -> dict[str, Any]:
    """The CreateCompilationJob body a job document asks for; ValidationException if it can't be."""
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            raise ValidationException("The job document is not JSON.") from None
    if not isinstance(document, dict):
        raise ValidationException('The job document must be a JSON object: {"operation": '
                                  f'"{OPERATION}", "request": {{...}}}}.')
    unknown = sorted(set(document) - {"operation", "request"})
    if unknown:
        raise ValidationException(f"The job document has unknown members {unknown}; "
                                  "it has only 'operation' and 'request'.")
    if document.get("operation") != OPERATION:
        raise ValidationException(f"The job document's operation is {document.get('operation')!r}; "
                                  f"IoT Jobs runs only {OPERATION!r}.")
    request = document.get("request")
    if not isinstance(request, dict):
        raise ValidationException(f"The job document's 'request' must be {OPERATION}'s request, a JSON object.")
    given = request.get("CompilationJobName")
    if given is not None and str(given).lower() != name.lower():
        raise ValidationException(f"The job document names the compilation job {given!r}; the agent names "
                                  f"it after the IoT job ({name}). Leave CompilationJobName out.")
    return {**request, "CompilationJobName": name}


def subscription_filters(thing: str) -> list[str]:
    """What the agent subscribes to: notify-next, notify, then the answers to its three requests."""
    base = f"$aws/things/{thing}/jobs"
    return [f"{base}/notify-next", f"{base}/notify"] + [
        f"{base}/{request}/{answer}" for request in ("start-next", "+/update", "+/get")
        for answer in ("accepted", "rejected")]


def request_filters(thing: str) -> list[str]:
    """What it publishes to, as filters ({jobId} is one level): StartNext, UpdateJobExecution, DescribeJobExecution."""
    base = f"$aws/things/{thing}/jobs"
    return [f"{base}/start-next", f"{base}/+/update", f"{base}/+/get"]


def step_timeout_minutes(max_runtime_s: int, margin_min: int) -> int:
    """MaxRuntimeInSeconds in whole minutes, rounded up, plus the margin, within IoT's 1..10080."""
    return max(1, min(STEP_TIMEOUT_MAX_MIN, math.ceil(max_runtime_s / 60) + int(margin_min)))


def detail(value: Any) -> str:
    """A statusDetails value: a string of 1..1024 characters with no control characters."""
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in str(value)).strip()
    if len(text) > DETAIL_VALUE_MAX:
        text = text[: DETAIL_VALUE_MAX - 3] + "..."
    return text or "-"


def details(**values: Any) -> dict[str, str]:
    return {key: detail(value) for key, value in values.items() if value not in (None, "")}


@dataclasses.dataclass
class Running:
    """The execution being worked on, and what was last told to IoT Jobs about it."""

    record: ExecutionRecord
    version: int | None = None
    step_sent: bool = False
    stage: str = ""
    percent: float = 0.0
    sent: tuple[str, float] | None = None
    sent_at: float = 0.0
    checked_at: float = dataclasses.field(default_factory=time.monotonic)


class IotJobsTransport:
    """AWS IoT Jobs for this thing; a plug-in of the API like every transport.

    `connection` is the AWS IoT Core connection (IotCoreConnection), or the Greengrass nucleus's
    (greengrass_ipc.IpcConnection, the same interface).
    """

    name = "iotjobs"

    def __init__(self, agent, connection: IotCoreConnection):
        self.api = agent.api_for(self.name)
        self.events = agent.events
        self.settings = agent.config.iotcore
        self.connection = connection
        self.base = f"$aws/things/{connection.thing}/jobs"
        self.ledger = ExecutionLedger(agent.config.state_dir / "iotjobs.sqlite3")
        self.current: Running | None = None
        self._work: queue.Queue = queue.Queue()
        self._answers: dict[str, concurrent.futures.Future] = {}
        self._answers_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._unsubscribe = None
        self._retry_at = 0.0  # when to try an unanswered start-next or final update again
        self._started = False

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        filters = subscription_filters(self.connection.thing)
        self.connection.route(filters[0], lambda m: self._queue("notify-next", _json(m)))
        self.connection.route(filters[1], lambda m: self._queue("notify", _json(m)))
        for answers in filters[2:]:
            self.connection.route(answers, self._on_answer)
        self.connection.on_connect(lambda resumed: self._queue("resync", None))
        self._unsubscribe = self.events.subscribe(self._on_event)
        self.connection.start()
        self._started = True
        if self.connection.connected:  # else the subscriptions and start-next follow the connection
            self.connection.subscribe(filters).result(self.settings.connect_timeout_s)
            self._queue("resync", None)
        self._thread = threading.Thread(target=self._run, name="iotjobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop taking executions; try once more to send a final status that is owed. Safe twice."""
        if not self._started:
            return
        self._started = False
        deadline = time.monotonic() + timeout
        if self._unsubscribe:
            self._unsubscribe()
        self._work.put(("flush", None))
        self._work.put(None)
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self.connection.stop(max(0.0, deadline - time.monotonic()))
        self.ledger.close()

    def _queue(self, kind: str, value: Any) -> None:
        self._work.put((kind, value))

    def _on_event(self, event: Event) -> None:
        if event.channel == self.name:  # only jobs this transport created
            self._queue("event", event)

    def _on_answer(self, message: Incoming) -> None:
        body = _json(message)
        with self._answers_lock:
            future = self._answers.pop(str(body.get("clientToken", "")), None)
        if future is not None:
            future.set_result((message.topic.endswith("/accepted"), body))

    # --- the worker: everything below runs on it, one item at a time -----------------------
    def _run(self) -> None:
        handlers = {"resync": self._resync, "notify-next": self._on_notify_next, "notify": self._on_notify,
                    "event": self._on_job_event, "flush": self._flush, "tick": self._tick}
        ticked = time.monotonic()
        while True:
            try:
                item = self._work.get(timeout=TICK_S)
            except queue.Empty:
                item = ("tick", None)
            if item is None:
                return
            if item[0] != "tick" and time.monotonic() - ticked >= TICK_S:
                self._work.put(("tick", None))  # a busy queue must not starve the timers
            if item[0] == "tick":
                ticked = time.monotonic()
            kind, value = item
            try:
                handlers[kind](value)
            except Exception:
                log.exception("IoT Jobs: %s failed", kind)

    def _request(self, topic: str, body: dict[str, Any]) -> tuple[bool, dict] | None:
        """Publish a Jobs request and wait for its accepted/rejected answer; None if none came."""
        token = uuid.uuid4().hex
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._answers_lock:
            self._answers[token] = future
        try:
            self.connection.publish(topic, json.dumps({**body, "clientToken": token}))
            return future.result(REQUEST_TIMEOUT_S)
        except Exception as exc:  # a timeout or the connection's IotCoreError
            log.warning("IoT Jobs: no answer to %s: %s", topic, exc or type(exc).__name__)
            return None
        finally:
            with self._answers_lock:
                self._answers.pop(token, None)

    def _resync(self, _=None) -> None:
        """After (re)connecting: settle what is owed, pick up what runs, then ask for the next.

        A notice may have been missed while offline, so a running execution is checked again.
        """
        running = self.current
        if running is not None:
            return self._send_final() if running.record.state == OWED else self._check()
        for record in self.ledger.unfinished():
            self._adopt(record, version=None)
            if self.current is not None:
                break
        self._start_next()

    def _start_next(self) -> None:
        if self.current is not None or not self._started:
            return
        answer = self._request(f"{self.base}/start-next", {})
        if answer is None or not answer[0]:
            self._retry_at = time.monotonic() + RETRY_S
            return
        execution = answer[1].get("execution")
        if execution:
            self._take(execution)

    def _take(self, execution: dict[str, Any]) -> None:
        job_id, number = str(execution["jobId"]), int(execution.get("executionNumber") or 1)
        record = self.ledger.get(job_id, number)
        if record is None:
            record = self.ledger.claim(job_id, number, compilation_job_name(job_id, number))
            log.info("IoT job %s (execution %d) is compilation job %s", job_id, number, record.name)
        self._adopt(record, execution.get("versionNumber"), execution.get("jobDocument"))

    def _adopt(self, record: ExecutionRecord, version: int | None, document: Any = None) -> None:
        """Work on `record`: send what it is owed, or create or follow its compilation job."""
        self.current = Running(record, version)
        if record.state == DONE:
            # Settled here, yet IoT Jobs still has it pending: the last word was lost or refused.
            # Say it again (a compile stopped for a cancel that IoT Jobs does not know of: FAILED),
            # or the execution would block this thing's queue until it timed out.
            if record.final:
                return self._finish(record.final["status"], record.final["statusDetails"])
            return self._finish("FAILED", details(CompilationJobName=record.name,
                                                  FailureReason=f"ServerError: {record.outcome}"))
        if record.state == OWED:
            return self._send_final()
        job = self._describe(record.name)
        if job is None:
            if document is None:  # after a restart, before start-next brought the document again
                self.current = None
                return
            try:
                self.api.call("CreateCompilationJob", request_from_document(document, record.name))
            except ResourceInUse:
                pass  # created just before a restart; follow it
            except ApiError as exc:
                return self._finish("FAILED", details(FailureReason=f"{exc.code}: {exc.message}"))
            job = self._describe(record.name)
        self._follow(job)

    def _follow(self, job: dict[str, Any] | None) -> None:
        if job is None:
            return self._finish("FAILED", details(FailureReason="ServerError: the compilation job is gone"))
        status = job["CompilationJobStatus"]
        if status in ("COMPLETED", "FAILED", "STOPPED"):
            return self._final_from(job, metrics=None)
        self._progress(force=True, started=(status == "INPROGRESS"))

    # --- reporting ---------------------------------------------------------------------------
    def _on_job_event(self, event: Event) -> None:
        running = self.current
        if running is None or event.job_name.lower() != running.record.name.lower() or running.record.state == OWED:
            return
        if event.status in ("COMPLETED", "FAILED", "STOPPED"):
            return self._final_from(self._describe(running.record.name), metrics=event.metrics)
        running.stage, running.percent = event.stage, event.percent
        self._progress(started=event.status == "INPROGRESS")

    def _progress(self, force: bool = False, started: bool = False) -> None:
        """IN_PROGRESS with {stage, percent}: a new stage at once, otherwise at most every interval."""
        running = self.current
        now = time.monotonic()
        want = (running.stage, round(running.percent))
        step = started and not running.step_sent
        if not (force or step):
            if want == running.sent:
                return
            gap = STAGE_GAP_S if running.sent is None or want[0] != running.sent[0] else \
                self.settings.jobs_progress_interval_s
            if now - running.sent_at < gap:
                return  # the tick sends it when due
        body: dict[str, Any] = {"status": "IN_PROGRESS", "statusDetails": details(
            CompilationJobName=running.record.name, stage=running.stage or "queued", percent=f"{running.percent:.0f}")}
        if step:
            job = self._describe(running.record.name) or {}
            max_runtime = (job.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds") or 86400
            body["stepTimeoutInMinutes"] = step_timeout_minutes(max_runtime, self.settings.jobs_step_margin_min)
        running.sent, running.sent_at = want, now
        answer = self._update(body)
        if answer is not None and answer[0] and step:
            running.step_sent = True

    def _final_from(self, job: dict[str, Any] | None, metrics: dict | None) -> None:
        if job is None:
            return self._finish("FAILED", details(FailureReason="ServerError: the compilation job is gone"))
        common = dict(CompilationJobName=job["CompilationJobName"], CompilationJobArn=job["CompilationJobArn"])
        if job["CompilationJobStatus"] == "COMPLETED":
            metrics = metrics or {}
            return self._finish("SUCCEEDED", details(
                **common, S3ModelArtifacts=(job.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
                ArtifactDigest=(job.get("ModelDigests") or {}).get("ArtifactDigest"),
                tvm_p50_ms=_p50(metrics, "tvm"), reference_engine=metrics.get("reference_engine"),
                reference_p50_ms=_p50(metrics, "reference"),
                speedup_vs_reference=_number(metrics.get("speedup_vs_reference")), stage="upload",
                percent="100"))  # 10 pairs: IoT Jobs' most
        reason = job.get("FailureReason") or (
            f"ClientError: Stopped: compilation job {job['CompilationJobName']} was stopped before it finished")
        self._finish("FAILED", details(**common, FailureReason=reason))

    def _finish(self, status: str, status_details: dict[str, str]) -> None:
        """Record the final status (owed), then send it; it is retried until IoT Jobs takes it."""
        self.ledger.owe(self.current.record, status, status_details)
        self._send_final()

    def _send_final(self) -> None:
        running = self.current
        final = running.record.final
        answer = self._update(dict(final))
        if answer is None:
            self._retry_at = time.monotonic() + RETRY_S
            return
        accepted, body = answer
        if not accepted and body.get("code") == "InvalidRequest" and final.get("statusDetails"):
            answer = self._update({"status": final["status"]})  # never lose the status over a detail
            accepted, body = answer if answer else (False, {"code": "no answer"})
        if not accepted and (body.get("executionState") or {}).get("status") == final["status"]:
            accepted = True  # an earlier try got through; its answer was lost
        outcome = f"reported {final['status']}" if accepted else f"not reported: {body.get('code')}"
        self._settle(outcome, next_now=accepted)

    def _update(self, body: dict[str, Any]) -> tuple[bool, dict] | None:
        """UpdateJobExecution with expectedVersion; a version or terminal surprise is handled here."""
        running = self.current
        topic = f"{self.base}/{running.record.job_id}/update"
        request = {**body, "executionNumber": running.record.execution_number, "includeJobExecutionState": True}
        if running.version is not None:
            request["expectedVersion"] = running.version
        answer = self._request(topic, request)
        if answer is not None and not answer[0] and answer[1].get("code") == "VersionMismatch":
            execution = self._describe_execution()  # someone else changed it: read it and try once more
            if execution is None:
                return answer
            running.version = execution.get("versionNumber")
            if execution.get("status") not in PENDING:
                self._cancelled(execution.get("status"))
                return None
            request["expectedVersion"] = running.version
            answer = self._request(topic, request)
        if answer is None:
            return None
        accepted, reply = answer
        if accepted:
            running.version = (reply.get("executionState") or {}).get("versionNumber", running.version)
            return answer
        log.warning("IoT Jobs: update of %s to %s rejected: %s: %s", running.record.job_id, body.get("status"),
                    reply.get("code"), reply.get("message"))
        if reply.get("code") in GONE and body.get("status") == "IN_PROGRESS":
            self._cancelled((reply.get("executionState") or {}).get("status") or reply.get("code"))
        return answer

    # --- cancellation --------------------------------------------------------------------------
    def _on_notify_next(self, body: dict) -> None:
        execution = body.get("execution") or {}
        running = self.current
        if running is None:
            if execution:
                self._start_next()
        elif execution.get("jobId") != running.record.job_id:
            self._check()

    def _on_notify(self, body: dict) -> None:
        jobs = body.get("jobs") or {}
        listed = {j.get("jobId") for status in PENDING for j in jobs.get(status, [])}
        running = self.current
        if running is None:
            if listed:
                self._start_next()
        elif running.record.job_id not in listed:
            self._check()

    def _check(self) -> None:
        """DescribeJobExecution: stop the compile if the execution was canceled, removed or timed out."""
        running = self.current
        running.checked_at = time.monotonic()
        execution = self._describe_execution()
        if execution is not None and execution.get("status") not in PENDING and running.record.state != OWED:
            self._cancelled(execution.get("status"))

    def _describe_execution(self) -> dict | None:
        running = self.current
        answer = self._request(f"{self.base}/{running.record.job_id}/get", {
            "executionNumber": running.record.execution_number, "includeJobDocument": False})
        if answer is None:
            return None
        accepted, body = answer
        if not accepted:
            return {"status": "REMOVED"} if body.get("code") == "ResourceNotFound" else None
        return body.get("execution") or {}

    def _cancelled(self, status: str | None) -> None:
        running = self.current
        log.info("IoT job %s is %s: stopping compilation job %s", running.record.job_id, status, running.record.name)
        try:
            self.api.call("StopCompilationJob", {"CompilationJobName": running.record.name})
        except (ValidationException, ResourceNotFound):
            pass  # it had ended already, or never started
        self._settle(f"{status or 'gone'} at IoT Jobs; compile stopped")

    def _settle(self, outcome: str, next_now: bool = True) -> None:
        """Done with the execution; on to the next (after RETRY_S when IoT Jobs refused our word)."""
        running = self.current
        self.ledger.done(running.record, outcome)
        log.info("IoT job %s: %s", running.record.job_id, outcome)
        self.current = None
        if next_now:
            self._queue("resync", None)
        else:
            self._retry_at = time.monotonic() + RETRY_S

    # --- timers ---------------------------------------------------------------------------------
    def _tick(self, _=None) -> None:
        now = time.monotonic()
        running = self.current
        if running is None:
            if self._retry_at and now >= self._retry_at:
                self._retry_at = 0.0
                self._resync()
            return
        if running.record.state == OWED:
            if now >= self._retry_at:
                self._send_final()
            return
        if now - running.checked_at >= CHECK_INTERVAL_S:
            self._check()
        if self.current is running:
            self._progress()  # a progress update held back by the throttle, when due

    def _flush(self, _=None) -> None:
        if self.current is not None and self.current.record.state == OWED:
            self._send_final()

    def _describe(self, name: str) -> dict[str, Any] | None:
        try:
            return self.api.call("DescribeCompilationJob", {"CompilationJobName": name})
        except ResourceNotFound:
            return None


def _p50(metrics: dict, engine: str) -> str | None:
    return _number(((metrics.get(engine) or {}).get("latency_ms") or {}).get("p50"))


def _number(value: Any) -> str | None:
    return None if value is None else f"{float(value):.4g}"


def _json(message: Incoming) -> dict:
    try:
        body = json.loads(message.payload or b"{}")
    except (ValueError, RecursionError):
        log.warning("IoT Jobs: %s carried no JSON", message.topic)
        return {}
    return body if isinstance(body, dict) else {}
