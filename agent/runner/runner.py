"""The runner: a FIFO queue of jobs and the workers that run each one in a child process.

The API admits a job (the store holds it as STARTING) and calls `enqueue`. A worker takes the
oldest, moves it to INPROGRESS and runs `agent.runner.child` in its own process group under
the job's limits. The worker alone ends a job it started; `stop` only asks.

After a restart, `recover` reads the store and works out where each job was: queued jobs are
queued again, a job that was running is FAILED (its child is killed if it survived), a job
that was stopping is STOPPED. Each such job says so in its notes, and its folder is tidied as
any ended job's is.

When a job ends, its folder is tidied and the state directory kept within its bound
(agent.runner.housekeeping has the rule); a job that would start on a nearly full disk fails
at once instead. One lock keeps two workers (and a deletion) from tidying the same folder at once.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import threading
import time
from typing import Callable

from agent.config import AgentConfig
from agent.errors import ClientError, ServerError
from agent.jobs.job import Job, Status
from agent.jobs.store import JobStore
from agent.runner import housekeeping
from agent.runner.child import memory_failure, timeout_failure
from agent.runner.process import PRIVATE_FILE_MODE, ChildProcess, Outcome, kill_leftover_child

log = logging.getLogger(__name__)

PENDING_CHECK_INTERVAL_S = 1.0
STAGE_MESSAGE_MAX = 512


class Runner:
    def __init__(self, store: JobStore, config: AgentConfig, clock: Callable[[], float] = time.time):
        self.store = store
        self.config = config
        self.clock = clock
        self._queue: collections.deque[str] = collections.deque()
        self._running: dict[str, ChildProcess] = {}
        self._cv = threading.Condition()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._disk = threading.Lock()  # housekeeping of the jobs' folders, one thread at a time

    # --- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        for index in range(self.config.concurrency):
            self._spawn(self._work, f"runner-{index}")
        self._spawn(self._watch_pending, "runner-pending")

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop taking work, stop the running children, wait for the workers. Safe to call twice.

        Queued jobs stay STARTING on disk and run after the next start.
        """
        with self._cv:
            if self._closing and not self._threads:
                return
            self._closing = True
            for child in self._running.values():
                child.request_stop()
            self._cv.notify_all()
        deadline = time.monotonic() + (timeout if timeout is not None else self.config.stop_grace_s + 5)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    def recover(self) -> None:
        ended: list[tuple[str, Status]] = []
        for job in self.store.with_status([Status.INPROGRESS, Status.STOPPING]):
            killed = kill_leftover_child(job.pid)
            found = "its compile process was still running and was killed" if killed else "its compile process was gone"
            if job.status == Status.STOPPING:
                self.store.transition(
                    job.name, Status.STOPPED, end_time=self.clock(), note=f"agent restarted while stopping; {found}"
                )
                ended.append((job.name, Status.STOPPED))
            else:
                reason = ServerError(
                    "AgentRestart",
                    f"the agent restarted while the job was in stage {job.stage}; the compile was not resumed",
                ).reason
                self.store.transition(
                    job.name, Status.FAILED, failure_reason=reason, end_time=self.clock(),
                    note=f"agent restarted during stage {job.stage}; {found}",
                )
                ended.append((job.name, Status.FAILED))
            log.info("recovered from %s (%s)", job.status.value, found, extra={"job": job.name})
        # Rule 2 for the jobs just ended, then rule 3, which also tidies a job that ended in
        # the last life but whose agent died before tidying it.
        for name, status in ended:
            self._prune(name, status)
        with self._disk:
            housekeeping.enforce_budget(self.store, self.config.jobs_dir, self.config.max_retained_mb * 2**20)
        for job in self.store.with_status([Status.STARTING]):
            self.store.update(job.name, note="queued again after an agent restart")
            with self._cv:
                self._queue.append(job.name)
            log.info("recovered: queued again", extra={"job": job.name})

    # --- what the API calls -----------------------------------------------------------
    def enqueue(self, name: str) -> None:
        with self._cv:
            self._queue.append(name)
            self._cv.notify_all()  # the pending watcher waits on the same condition

    def stop(self, name: str) -> None:
        with self._cv:
            if name in self._queue:
                self._queue.remove(name)
                self.store.transition(name, Status.STOPPED, end_time=self.clock(), stage="queued")
                return
            child = self._running.get(name)
            job = self.store.get(name)
            if job.status in (Status.STARTING, Status.INPROGRESS):
                self.store.transition(name, Status.STOPPING)
            if child is not None:
                child.request_stop()

    def forget(self, name: str) -> None:
        """The job was deleted: its local files go too."""
        with self._disk:
            shutil.rmtree(self.config.job_dir(name), ignore_errors=True)

    def queued(self) -> list[str]:
        with self._cv:
            return list(self._queue)

    # --- workers ----------------------------------------------------------------------
    def _next(self) -> str | None:
        with self._cv:
            while not self._queue and not self._closing:
                self._cv.wait()
            if self._closing:
                return None
            return self._queue.popleft()

    def _work(self) -> None:
        while True:
            name = self._next()
            if name is None:
                return
            try:
                self._run(name)
            except Exception:
                log.exception("the runner failed", extra={"job": name})
                self._fail_if_open(name, ServerError("", "the agent's runner failed; see the agent log").reason)

    def _watch_pending(self) -> None:
        """Fail queued jobs whose MaxPendingTimeInSeconds has passed."""
        while True:
            with self._cv:
                if self._closing:
                    return
                self._cv.wait(PENDING_CHECK_INTERVAL_S)
                names = list(self._queue)
            now = self.clock()
            for name in names:
                job = self.store.find(name)
                if job is None or not _pending_expired(job, now):
                    continue
                with self._cv:
                    if name not in self._queue:
                        continue
                    self._queue.remove(name)
                self._fail_pending(job, now)

    def _fail_pending(self, job: Job, now: float) -> None:
        reason = ClientError(
            "TimeOut",
            f"the job waited {now - job.creation_time:.0f} s in the queue, longer than "
            f"MaxPendingTimeInSeconds={job.max_pending}",
        ).reason
        self.store.transition(job.name, Status.FAILED, failure_reason=reason, end_time=now)
        log.info("failed: %s", reason, extra={"job": job.name})

    def _run(self, name: str) -> None:
        job = self.store.find(name)
        if job is not None and job.status == Status.STOPPING:  # stopped between queue and start
            self.store.transition(name, Status.STOPPED, end_time=self.clock())
            return
        if job is None or job.status != Status.STARTING:
            return  # deleted or already ended while queued
        start = self.clock()
        if _pending_expired(job, start):
            self._fail_pending(job, start)
            return
        if not self._room_for_a_job(name):
            return
        job = self.store.transition(name, Status.INPROGRESS, start_time=start, stage="fetch", percent=0.0)
        deadline = start + job.max_runtime
        job_dir = self.config.job_dir(name)
        job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        job_dir.chmod(0o700)  # the job's log and files are the agent's alone, whatever the umask
        spec_path = job_dir / "spec.json"
        with open(os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE), "w") as spec:
            json.dump({"job": job.to_dict(), "config": self.config.to_child(), "deadline": deadline,
                       "workdir": str(job_dir / "work"), "log": str(job_dir / "job.log")}, spec)
        child = ChildProcess(
            spec_path,
            job_dir / "job.log",
            lambda message: self._on_message(name, message),
            memory_limit_mb=self.config.memory_limit_mb,
            kill_at=deadline + self.config.deadline_grace_s,
            stop_grace_s=self.config.stop_grace_s,
            clock=self.clock,
            env=self.config.child_environment(),  # the S3 secrets: never in spec.json
        )
        with self._cv:
            self._running[name] = child
            stop_now = self._closing
        try:
            child.start()
            self.store.update(name, pid=child.pid)
            log.info("started (pid %s, deadline in %d s)", child.pid, job.max_runtime, extra={"job": name})
            if stop_now or self.store.get(name).status == Status.STOPPING:
                child.request_stop()
            outcome = child.wait()
        finally:
            with self._cv:
                self._running.pop(name, None)
        self._finish(name, outcome)

    def _on_message(self, name: str, message: dict) -> None:
        event = message.get("event")
        if event == "stage":
            self.store.update(name, stage=message["stage"], percent=float(message.get("percent", 0.0)),
                              stage_message=str(message.get("message", ""))[:STAGE_MESSAGE_MAX])
        elif event == "derived":
            self.store.update(name, derived_input_config=message["data_input_config"])

    def _finish(self, name: str, outcome: Outcome) -> None:
        job = self.store.get(name)
        now = self.clock()
        if outcome.result is not None and not outcome.killed_for:
            self.store.transition(
                name, Status.COMPLETED, end_time=now, pid=None, stage="upload", percent=100.0,
                artifact_uri=outcome.result["artifact_uri"],
                artifact_digest=outcome.result["artifact_digest"],
                metrics=outcome.result["metrics"],
            )
            log.info("COMPLETED: %s", outcome.result["artifact_uri"], extra={"job": name})
            self._tidy(name, Status.COMPLETED)
            return
        if job.status == Status.STOPPING:
            status, reason = Status.STOPPED, ""
        elif self._closing and not outcome.failure:
            # The agent is shutting down: whether the child acknowledged SIGTERM or had to be
            # killed after the grace period, the truth is the same.
            status = Status.FAILED
            reason = ServerError("AgentShutdown", f"the agent shut down while the job was in stage {job.stage}").reason
        elif outcome.stopped:
            status, reason = Status.STOPPED, ""
        elif outcome.killed_for == "memory":
            detail = f"peak {outcome.peak_rss_mb:.0f} MiB in stage {job.stage}"
            status, reason = Status.FAILED, memory_failure(self.config.memory_limit_mb, detail).reason
        elif outcome.killed_for == "deadline":
            status, reason = Status.FAILED, timeout_failure(job.max_runtime, job.stage).reason
        elif outcome.failure:
            status, reason = Status.FAILED, outcome.failure
        else:
            status = Status.FAILED
            how = f"signal {-outcome.returncode}" if (outcome.returncode or 0) < 0 else f"exit code {outcome.returncode}"
            reason = ServerError(
                "", f"the compile process ended ({how}) in stage {job.stage} without a result; see the job log"
            ).reason
        self.store.transition(name, status, end_time=now, pid=None, failure_reason=reason)
        log.info("%s %s", status.value, reason, extra={"job": name})
        self._tidy(name, status)

    def _tidy(self, name: str, status: Status) -> None:
        """housekeeping's rules 2 and 3, once a job has ended."""
        self._prune(name, status)
        with self._disk:
            housekeeping.enforce_budget(self.store, self.config.jobs_dir, self.config.max_retained_mb * 2**20)

    def _prune(self, name: str, status: Status) -> None:
        """housekeeping's rule 2, and a note naming the artifact it keeps."""
        with self._disk:
            kept = housekeeping.prune_ended(self.config.job_dir(name), status)
        if kept:
            self.store.update(name, note=f"the packed artifact stays on this device until the job is deleted: "
                                         f"{', '.join(str(p) for p in kept)}")

    def _room_for_a_job(self, name: str) -> bool:
        """housekeeping's rule 4: fail the job now rather than halfway through on a full disk."""
        free = housekeeping.free_bytes(self.config.state_dir)
        if free >= self.config.min_free_mb * 2**20:
            return True
        with self._disk:
            housekeeping.enforce_budget(self.store, self.config.jobs_dir, 0, keep=name)
        free = housekeeping.free_bytes(self.config.state_dir)
        if free >= self.config.min_free_mb * 2**20:
            return True
        reason = ServerError("InsufficientDiskSpace", f"the state directory {self.config.state_dir} has "
                                                      f"{free // 2**20} MiB free; a job needs at least "
                                                      f"min_free_mb={self.config.min_free_mb}").reason
        self.store.transition(name, Status.FAILED, failure_reason=reason, end_time=self.clock())
        log.warning("FAILED %s", reason, extra={"job": name})
        return False

    def _fail_if_open(self, name: str, reason: str) -> None:
        job = self.store.find(name)
        if job is not None and not job.status.terminal:
            self.store.transition(name, Status.FAILED, failure_reason=reason, end_time=self.clock())


def _pending_expired(job: Job, now: float) -> bool:
    return job.max_pending is not None and now - job.creation_time > job.max_pending
