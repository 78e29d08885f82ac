"""What the IoT Jobs transport must remember across restarts: which execution is which job.

One SQLite file in the state directory (`iotjobs.sqlite3`), one row per IoT job execution
the agent has taken. The row is written before the compilation job is created, so a
duplicate notification or a restart can never start a job twice; and a final status is
written here ("owed") before it is sent, and cleared ("done") only when IoT Jobs has
accepted it, so a final status outlives a lost connection or a restart.

    active ──> owed ──> done        (done straight from active when the execution was
                                     canceled or removed: nothing is owed then)
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

from agent.durable import open_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    job_id TEXT NOT NULL,
    execution_number INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    final TEXT,
    outcome TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (job_id, execution_number)
);
"""

ACTIVE, OWED, DONE = "active", "owed", "done"


@dataclasses.dataclass
class ExecutionRecord:
    """One execution: its compilation job's name and, once known, the final update it is owed."""

    job_id: str
    execution_number: int
    name: str
    state: str = ACTIVE
    final: dict[str, Any] | None = None  # {"status": ..., "statusDetails": {...}}
    outcome: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return self.job_id, self.execution_number


class ExecutionLedger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_db(self.path, SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, job_id: str, execution_number: int) -> ExecutionRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT job_id, execution_number, name, state, final, outcome FROM executions "
                "WHERE job_id=? AND execution_number=?", (job_id, execution_number)).fetchone()
        return _record(row) if row else None

    def unfinished(self) -> list[ExecutionRecord]:
        """Executions not yet done, oldest first: what a restart must pick up again."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, execution_number, name, state, final, outcome FROM executions "
                "WHERE state != ? ORDER BY created", (DONE,)).fetchall()
        return [_record(r) for r in rows]

    def claim(self, job_id: str, execution_number: int, name: str) -> ExecutionRecord:
        """Record a newly taken execution (idempotent: an existing row is returned unchanged)."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO executions (job_id, execution_number, name, state, created, updated) "
                "VALUES (?,?,?,?,?,?)", (job_id, execution_number, name, ACTIVE, now, now))
        record = self.get(job_id, execution_number)
        assert record is not None
        return record

    def owe(self, record: ExecutionRecord, status: str, details: dict[str, str]) -> ExecutionRecord:
        record.state, record.final = OWED, {"status": status, "statusDetails": details}
        self._write(record)
        return record

    def done(self, record: ExecutionRecord, outcome: str) -> ExecutionRecord:
        record.state, record.outcome = DONE, outcome
        self._write(record)
        return record

    def _write(self, record: ExecutionRecord) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE executions SET state=?, final=?, outcome=?, updated=? WHERE job_id=? AND execution_number=?",
                (record.state, json.dumps(record.final) if record.final else None, record.outcome, time.time(),
                 record.job_id, record.execution_number))


def _record(row) -> ExecutionRecord:
    job_id, number, name, state, final, outcome = row
    return ExecutionRecord(job_id, number, name, state, json.loads(final) if final else None, outcome)
