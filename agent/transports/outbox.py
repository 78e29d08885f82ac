"""The outbox: job events that must reach the broker, kept on disk until it acknowledges them.

MQTT's QoS 1 retries only while the client process lives; a final status published while
the broker is down, or while the agent is being restarted, would otherwise be lost. So an
MQTT-based transport records each event that must be delivered (status changes and deletes)
here first, publishes it, and marks it acknowledged when the broker's PUBACK arrives. What is
still pending is published again after every reconnect and after an agent restart.

It also hands out each job's event sequence numbers (`seq`), durably, so they keep
increasing across restarts and clients can drop the duplicates that re-sending produces.
One entry per (job, generation, key): a status is recorded once per job, however often the
event reaches the transport. The generation moves on when the job's record is deleted, so a
new job that reuses the name starts with a clean slate (but its seqs keep increasing).

One SQLite file in the state directory (WAL, synchronous=FULL), like the job store.
"""
from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from agent.durable import open_db

ACKED_RETENTION_S = 7 * 86400  # acknowledged entries are kept this long, then pruned at open

SCHEMA = """
CREATE TABLE IF NOT EXISTS sequences (
    job TEXT PRIMARY KEY COLLATE NOCASE,
    seq INTEGER NOT NULL,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL COLLATE NOCASE,
    generation INTEGER NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    acked REAL,
    UNIQUE (job, generation, key)
);
CREATE INDEX IF NOT EXISTS entries_pending ON entries(acked, id);
"""


@dataclasses.dataclass(frozen=True)
class Entry:
    id: int
    job: str
    key: str
    seq: int
    topic: str
    payload: bytes


class Outbox:
    def __init__(self, path: Path | str, clock: Callable[[], float] = time.time):
        self.path = str(path)
        self.clock = clock
        self._lock = threading.Lock()
        self._db = open_db(self.path, SCHEMA)
        self._db.execute("DELETE FROM entries WHERE acked IS NOT NULL AND acked < ?",
                         (self.clock() - ACKED_RETENTION_S,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def next_seq(self, job: str) -> int:
        """The job's next event sequence number (for events that are not recorded)."""
        with self._lock, self._transaction():
            return self._bump(job)[0]

    def record(self, job: str, key: str, topic: str, build: Callable[[int], bytes]) -> Entry | None:
        """Record the event `key` of `job` ("COMPLETED", "deleted", ...) as pending.

        `build(seq)` makes the payload once the seq is known. Returns None, and uses no seq,
        when this job (in its current generation) already has an entry for `key`.
        """
        with self._lock, self._transaction():
            generation = self._generation(job)
            found = self._db.execute(
                "SELECT 1 FROM entries WHERE job=? AND generation=? AND key=?", (job, generation, key)
            ).fetchone()
            if found:
                return None
            seq, generation = self._bump(job)
            payload = build(seq)
            cursor = self._db.execute(
                "INSERT INTO entries (job, generation, key, seq, topic, payload, created) VALUES (?,?,?,?,?,?,?)",
                (job, generation, key, seq, topic, payload, self.clock()),
            )
            return Entry(cursor.lastrowid, job, key, seq, topic, payload)

    def ack(self, entry_id: int) -> None:
        """The broker has it: never send it again."""
        with self._lock:
            self._db.execute("UPDATE entries SET acked=? WHERE id=? AND acked IS NULL", (self.clock(), entry_id))

    def pending(self) -> list[Entry]:
        """Unacknowledged entries, oldest first (so each job's events keep their order)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, job, key, seq, topic, payload FROM entries WHERE acked IS NULL ORDER BY id"
            ).fetchall()
        return [Entry(r[0], r[1], r[2], r[3], r[4], bytes(r[5])) for r in rows]

    def new_generation(self, job: str) -> None:
        """The job's record is gone (DeleteCompilationJob); its name may be used again."""
        with self._lock, self._transaction():
            generation = self._generation(job)
            self._db.execute("UPDATE sequences SET generation=? WHERE job=?", (generation + 1, job))
            self._db.execute("DELETE FROM entries WHERE job=? AND acked IS NOT NULL", (job,))

    # --- inside a transaction, under the lock --------------------------------------------
    def _generation(self, job: str) -> int:
        row = self._db.execute("SELECT generation FROM sequences WHERE job=?", (job,)).fetchone()
        return row[0] if row else 0

    def _bump(self, job: str) -> tuple[int, int]:
        self._db.execute("INSERT OR IGNORE INTO sequences (job, seq, generation) VALUES (?, 0, 0)", (job,))
        self._db.execute("UPDATE sequences SET seq = seq + 1 WHERE job=?", (job,))
        seq, generation = self._db.execute("SELECT seq, generation FROM sequences WHERE job=?", (job,)).fetchone()
        return seq, generation

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), for autocommit connections."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *rest) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
