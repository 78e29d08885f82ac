"""The one way the agent opens a SQLite file it must never lose a write to.

The job store, the MQTT/IoT Core outboxes and the IoT Jobs ledger all promise the same thing:
a change is on disk before anyone hears of it. WAL with synchronous=FULL keeps that promise
across a power cut; autocommit (isolation_level=None) makes each statement its own
transaction unless the caller opens one. Connections are shared between threads behind the
owner's own lock.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

MEMORY = ":memory:"


def open_db(path: Path | str, schema: str) -> sqlite3.Connection:
    path = str(path)
    if path != MEMORY:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db
