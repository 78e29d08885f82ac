"""The durable job store: one SQLite file in the state directory.

Every change is committed (WAL, synchronous=FULL) before anyone hears of it, so a power cut
never leaves a job that an API answer or an event claimed but the disk does not hold.
Names are unique case-insensitively, as SageMaker's are (its ARNs are lower-case).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from agent.durable import open_db
from agent.errors import ResourceInUse, ResourceLimitExceeded, ResourceNotFound
from agent.jobs.events import Event, EventBus
from agent.jobs.job import Job, Status, check_transition

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    creation_time REAL NOT NULL,
    last_modified_time REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE INDEX IF NOT EXISTS jobs_creation ON jobs(creation_time);
"""

SORT_COLUMNS = {"Name": "name COLLATE NOCASE", "CreationTime": "creation_time", "Status": "status"}


class JobStore:
    def __init__(self, path: Path, events: EventBus | None = None, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.events = events or EventBus()
        self.clock = clock
        self._lock = threading.RLock()
        self._db = open_db(self.path, SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writes -----------------------------------------------------------------------
    def create(self, job: Job, *, queue_limit: int | None = None) -> Job:
        """Record a new job. With `queue_limit`, refuse it (ResourceLimitExceeded) when that
        many jobs are already waiting to start; the count and the insert are one step."""
        with self._lock:
            if queue_limit is not None:
                queued = self.count([Status.STARTING])
                if queued >= queue_limit:
                    raise ResourceLimitExceeded(
                        f"This device already has {queued} compilation jobs waiting to start, its limit "
                        f"({queue_limit}); try again when one has started."
                    )
            now = self.clock()
            job.creation_time = job.creation_time or now
            job.last_modified_time = job.creation_time
            row = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()
            job.seq = row[0]
            try:
                self._db.execute(
                    "INSERT INTO jobs (name, seq, status, creation_time, last_modified_time, data) VALUES (?,?,?,?,?,?)",
                    (job.name, job.seq, job.status.value, job.creation_time, job.last_modified_time, _dump(job)),
                )
            except sqlite3.IntegrityError:
                raise ResourceInUse(f"Compilation job {job.name} already exists.") from None
        self._publish("status", job)
        return job

    def update(self, name: str, *, status: Status | None = None, note: str | None = None, **changes: Any) -> Job:
        """Apply `changes` (Job fields) and, optionally, a status transition, atomically.

        A transition the state machine forbids raises IllegalTransition and changes nothing.
        """
        with self._lock:
            job = self.get(name)
            old_status = job.status
            if status is not None and status != job.status:
                check_transition(job.status, status)
                job.status = status
            for key, value in changes.items():
                if not hasattr(job, key):
                    raise AttributeError(f"Job has no field {key!r}")
                setattr(job, key, value)
            if note:
                job.notes.append(note)
            job.last_modified_time = max(self.clock(), job.last_modified_time)
            self._db.execute(
                "UPDATE jobs SET status=?, last_modified_time=?, data=? WHERE name=?",
                (job.status.value, job.last_modified_time, _dump(job), job.name),
            )
        self._publish("status" if job.status != old_status else "progress", job)
        return job

    def transition(self, name: str, status: Status, **changes: Any) -> Job:
        return self.update(name, status=status, **changes)

    def delete(self, name: str) -> None:
        with self._lock:
            job = self.get(name)
            self._db.execute("DELETE FROM jobs WHERE name=?", (job.name,))
        self._publish("deleted", job)

    # --- reads ------------------------------------------------------------------------
    def get(self, name: str) -> Job:
        with self._lock:
            row = self._db.execute("SELECT data FROM jobs WHERE name=?", (name,)).fetchone()
        if row is None:
            raise ResourceNotFound(f"Could not find compilation job '{name}'.")
        return _load(row[0])

    def find(self, name: str) -> Job | None:
        try:
            return self.get(name)
        except ResourceNotFound:
            return None

    def with_status(self, statuses: Iterable[Status]) -> list[Job]:
        """Jobs in any of `statuses`, oldest first (queue order)."""
        values = [s.value for s in statuses]
        marks = ",".join("?" * len(values))
        with self._lock:
            rows = self._db.execute(f"SELECT data FROM jobs WHERE status IN ({marks}) ORDER BY seq", values).fetchall()
        return [_load(r[0]) for r in rows]

    def count(self, statuses: Iterable[Status]) -> int:
        values = [s.value for s in statuses]
        marks = ",".join("?" * len(values))
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", values).fetchone()[0]

    def query(
        self,
        *,
        creation_after: float | None = None,
        creation_before: float | None = None,
        modified_after: float | None = None,
        modified_before: float | None = None,
        name_contains: str | None = None,
        status: str | None = None,
        sort_by: str = "CreationTime",
        descending: bool = True,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[Job]:
        """The ListCompilationJobs query. Time bounds are strict, as SageMaker's are."""
        where, args = [], []
        for column, op, value in (
            ("creation_time", ">", creation_after),
            ("creation_time", "<", creation_before),
            ("last_modified_time", ">", modified_after),
            ("last_modified_time", "<", modified_before),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        if name_contains:
            where.append("instr(lower(name), lower(?)) > 0")
            args.append(name_contains)
        if status:
            where.append("status = ?")
            args.append(status)
        order = "DESC" if descending else "ASC"
        sql = "SELECT data FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {SORT_COLUMNS[sort_by]} {order}, seq {order}"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_load(r[0]) for r in rows]

    # --- events -----------------------------------------------------------------------
    def _publish(self, kind: str, job: Job) -> None:
        self.events.publish(
            Event(
                kind=kind,
                job_name=job.name,
                status=job.status.value,
                stage=job.stage,
                percent=job.percent,
                message=job.stage_message,
                failure_reason=job.failure_reason,
                metrics=job.metrics if job.status == Status.COMPLETED else None,
                channel=job.channel,
                time=job.last_modified_time,
            )
        )


def _dump(job: Job) -> str:
    return json.dumps(job.to_dict(), sort_keys=True)


def _load(text: str) -> Job:
    return Job.from_dict(json.loads(text))
