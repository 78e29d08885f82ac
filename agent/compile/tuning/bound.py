"""What the tuning databases may take on disk, and what goes when a write would take more.

    fit(db, snapshot, keep) -> (snapshot, text)   what TuningDatabase writes, under its lock
    remove_stale_files(root)                       when a job opens a database

The rule (README, Files on disk): the databases under state_dir/tuning, one per kind of
device, together take at most tuning.max_database_mb. A write that would pass it evicts,
least recently used first:

  - whole workloads of the database being written, by Entry.last_used (when a job last
    tuned or applied it). Whole, because records without their trial count and choice would
    only be tuned again; least recently used, because a device compiles the same models
    again and again, and what it stopped compiling is what it can best lose;
  - whole databases of other kinds of device, by when their file was last written (a job
    that uses one rewrites it at least once an hour: database.USE_RESOLUTION_S). A TVM
    upgrade or a profile no longer compiled for leaves one behind; one that another job
    holds locked stays.

The workloads of the job that writes (`keep`) go last, so a job does not lose what it is
using. A model's plan goes once none of the workloads it names is left. Emptied folders and
their lock files stay: removing a folder another process may be about to lock would race it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import fnmatch
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Collection

from agent.compile.tuning.database import FILE_NAME, LOCK_NAME, SEPARATORS, TEMP_PATTERNS

if TYPE_CHECKING:  # pragma: no cover
    from agent.compile.tuning.database import Snapshot, TuningDatabase

log = logging.getLogger(__name__)

STALE_TEMP_S = 300.0   # a live write or pull writes to its file more often than this
NAMES_LOGGED = 10


@dataclasses.dataclass(frozen=True)
class Other:
    """Another kind of device's database, evicted whole."""

    dir: Path
    size: int
    last_used: str   # its file's modification time, written as Entry.last_used() writes times


def fit(db: "TuningDatabase", snapshot: "Snapshot", keep: Collection[str]) -> tuple["Snapshot", str]:
    """`snapshot` less what the bound evicts, and its text to write; see the module docstring."""
    text = db.text(snapshot)
    if db.max_bytes is None:
        return snapshot, text
    others = _other_databases(db)
    room = db.max_bytes - sum(other.size for other in others)
    if len(text) <= room:
        return snapshot, text
    entries, models = dict(snapshot.entries), dict(snapshot.models)
    plans = len(models)
    queue = iter(sorted(
        [(False, other.last_used, str(other.dir), other) for other in others] +
        [(workload in keep, entry.last_used(), workload, None) for workload, entry in entries.items()],
        key=lambda item: item[:3]))
    evicted: list[str] = []
    dropped: list[Other] = []
    while len(text) > room:
        over, exhausted = len(text) - room, True
        for _, last_used, workload, other in queue:  # until the estimate fits; the text then says for sure
            if other is not None:
                if _drop(other):
                    dropped.append(other)
                    room += other.size
                    over -= other.size
            else:
                entry = entries.pop(workload)
                evicted.append(f"{entry.name or workload} (last used {last_used or 'unrecorded'})")
                over -= len(json.dumps(workload)) + 2 + len(json.dumps(entry.to_json(), separators=SEPARATORS))
            if over <= 0:
                exhausted = False
                break
        models = {model: plan for model, plan in models.items() if _names_one_of(plan, entries, keep)}
        snapshot = dataclasses.replace(snapshot, entries=entries, models=models)
        text = db.text(snapshot)
        if exhausted:
            break
    shown = ", ".join(evicted[:NAMES_LOGGED]) + \
        (f" and {len(evicted) - NAMES_LOGGED} more" if len(evicted) > NAMES_LOGGED else "")
    log.info("tuning database %s would pass the %g MiB bound: evicted %d workloads%s, %d model plans and "
             "%d other databases%s", db.dir.name, db.max_bytes / 2**20, len(evicted), f" ({shown})" if evicted else "",
             plans - len(models), len(dropped),
             f" ({', '.join(other.dir.name for other in dropped)})" if dropped else "")
    if len(text) > room:
        log.warning("tuning database %s: still %d bytes over the bound; what is left is in use", db.dir.name,
                    len(text) - room)
    return snapshot, text


def _names_one_of(plan: object, entries: dict, keep: Collection[str]) -> bool:
    """Whether a model's plan names a workload still held, or one the writing job uses
    (its plan is written before its first workload is tuned)."""
    planned = plan.get("planned") if isinstance(plan, dict) else None
    return isinstance(planned, dict) and any(w in entries or w in keep for w in planned)


def _other_databases(db: "TuningDatabase") -> list[Other]:
    others = []
    with contextlib.suppress(OSError):
        for folder in db.dir.parent.iterdir():
            if folder == db.dir:
                continue
            try:
                info = (folder / FILE_NAME).stat()
            except OSError:  # not a database folder, or one already emptied
                continue
            others.append(Other(folder, info.st_size, _iso(info.st_mtime)))
    return others


def _drop(other: Other) -> bool:
    """Remove another database's file, unless a job holds its lock (it is in use)."""
    try:
        handle = open(other.dir / LOCK_NAME, "a+")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        try:
            (other.dir / FILE_NAME).unlink(missing_ok=True)
            return True
        except OSError:
            return False
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="milliseconds")


def remove_stale_files(root: Path, max_age_s: float = STALE_TEMP_S) -> list[Path]:
    """Remove the temporary files and folders (database.TEMP_PATTERNS) older than `max_age_s`
    from every database folder under `root`; returns what went. Each write and pull cleans up
    after itself, except when it is killed (SIGKILL, the memory limit, a power cut): then
    nothing else would ever remove it. A live one is younger: its file is written to until
    it is renamed or the download ends."""
    removed: list[Path] = []
    now = time.time()
    try:
        folders = [folder for folder in Path(root).iterdir() if folder.is_dir() and not folder.is_symlink()]
    except OSError:  # no tuning folder yet
        return removed
    for folder in folders:
        with contextlib.suppress(OSError):
            for path in list(folder.iterdir()):
                if not any(fnmatch.fnmatchcase(path.name, pattern) for pattern in TEMP_PATTERNS):
                    continue
                try:
                    if now - _newest_mtime(path) < max_age_s:
                        continue
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                except OSError as exc:  # another agent's cleanup got there first, say
                    log.debug("could not remove %s: %s", path, exc)
                    continue
                removed.append(path)
    if removed:
        log.info("removed %d stale temporary files of the tuning database: %s", len(removed),
                 ", ".join(f"{path.parent.name}/{path.name}" for path in removed))
    return removed


def _newest_mtime(path: Path) -> float:
    """The latest modification under `path` (a pull's folder is older than the download in it)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for parent, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
    return newest
