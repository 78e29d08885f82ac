"""The tuning database: MetaSchedule's records, kept across jobs, one per kind of machine.

    key = DatabaseKey.for_target(profile, tvm_config)   what the records are valid for
    db = TuningDatabase(state_dir / "tuning", key, max_bytes=...)   state_dir/tuning/<key.name>/database.json
    db.load(using=workloads) -> Snapshot(entries, stats, models)   read under a shared lock
    db.merge(Snapshot(...), keep=workloads)             under the exclusive lock; write, then rename
    db.pull(uri) / db.push(uri)                         share through S3 (pushing is opt-in)

Why a key of our own: TVM applies a record to any workload with the same structure and
never looks at the record's target (its QueryTuningRecord ignores it), so a database tuned
on a 2-core AVX2 machine would happily schedule a Cortex-A72. One directory per device
profile, LLVM triple, CPU, features, core count and TVM version keeps each machine's records
to itself; a fleet of identical devices shares one key, and so one S3 object.

The file is ours, one JSON document (so a push uploads one object, and a rename replaces it
whole), holding per workload (TVM's structural hash of the PrimFunc, normalized as "main"):

    name      the kernel it was first seen as (for people reading the file)
    mod       the workload as TVM serializes it (Workload.as_json()[1])
    trials    how many candidates the agent has measured for it, over all jobs: what
              "never tune an operator twice" is checked against
    records   the best RECORDS_KEPT records as search.record_json() writes them, fastest first
    choice    the last comparison of the best record with the agent's rule schedule:
              {"rule", "record", "rule_us", "tuned_us", "winner", "at"}; valid while the
              rule version and the best record are the ones compared
    used      when a job last tuned or applied it (at most USE_RESOLUTION_S old while it is
              in use): what the bound evicts by. Files from before it have none, and load.

Beside the workloads: "stats", what tuning costs on this kind of machine
({"seconds_per_trial", "at"}); and "models", per model (the hash of its workloads) the plan
its last tuning followed ({"budget_s", "trials", "planned": {workload: trials}, "at"}), so a
recompile with the same budget follows the same plan instead of a new one drawn from a noisy
profile, and finds it met.

Merging (local updates and pulls alike) unions records by trace, keeps the fastest, takes
the larger trial count, the newer choice, stats and plan and the later use, so merging the
same data twice changes nothing. Every write keeps the databases within their bound on disk,
evicting whole workloads least recently used first (agent.compile.tuning.bound).
Nothing here imports TVM.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Collection, Iterator

log = logging.getLogger(__name__)

FORMAT = "neo-edge-agent/tuning-db/1"
FILE_NAME = "database.json"
LOCK_NAME = "database.lock"
RECORDS_KEPT = 32        # the evolutionary search starts from the best of these
MAX_PULL_BYTES = 256 * 2**20
MISSING_OBJECT = ("S3 object does not exist", "File does not exist")  # agent.storage's words
FAILED_RUN_S = 1e9       # MetaSchedule's run time for a candidate that failed to build or run
USE_RESOLUTION_S = 3600  # a use is recorded when the last is older: a warm recompile rarely rewrites the file
SEPARATORS = (",", ":")
# What a write (mkstemp), a pull and a push leave behind when they are killed before cleaning up.
TEMP_PATTERNS = (f".{FILE_NAME}.*.tmp", ".pull-*", ".push-*")


@dataclasses.dataclass(frozen=True)
class DatabaseKey:
    """What records are valid for; `name` is the directory and the S3 object's folder."""

    fields: dict[str, Any]

    @classmethod
    def for_target(cls, profile: str, tvm_config: dict[str, Any]) -> "DatabaseKey":
        """The key of a job's target: its device profile and the LLVM target TVM builds for
        (a CUDA target's host), with the installed TVM's versions."""
        llvm = tvm_config.get("host", tvm_config) if tvm_config.get("kind") == "cuda" else tvm_config
        return cls({
            "profile": profile,
            "mtriple": str(llvm.get("mtriple", "")),
            "mcpu": str(llvm.get("mcpu", "")),
            "mattr": sorted(str(a) for a in llvm.get("mattr", []) or []),
            "num_cores": int(llvm.get("num-cores", 0)),
            "tvm": _version("apache-tvm"),
            "tvm_ffi": _version("apache-tvm-ffi"),
        })

    @property
    def name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.fields, sort_keys=True).encode()).hexdigest()[:10]
        readable = "-".join(str(self.fields.get(k, "")) for k in ("profile", "mcpu"))
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", readable)[:60]
        return f"{readable}-{self.fields.get('num_cores', 0)}c-{digest}"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@dataclasses.dataclass
class Entry:
    """One workload's records, trial count, last rule-vs-tuned choice and last use."""

    name: str
    mod: str
    trials: int = 0
    records: list = dataclasses.field(default_factory=list)
    choice: dict | None = None
    used: str = ""   # now_iso() of the last job that tuned or applied it; "" in older files

    def best(self) -> list | None:
        return self.records[0] if self.records else None

    def last_used(self) -> str:
        """When a job last used it, as far as the file knows: a file from before `used` has
        at least the time of the last comparison; else "", older than any time."""
        return self.used or str((self.choice or {}).get("at", ""))

    def merged(self, other: "Entry") -> "Entry":
        seen: dict[str, list] = {}
        for record in self.records + other.records:
            if _mean_run_s(record) < FAILED_RUN_S:
                seen.setdefault(record_id(record), record)
        records = sorted(seen.values(), key=_mean_run_s)[:RECORDS_KEPT]
        choices = [c for c in (self.choice, other.choice) if c]
        return Entry(self.name or other.name, self.mod or other.mod, max(self.trials, other.trials), records,
                     max(choices, key=lambda c: c.get("at", "")) if choices else None, max(self.used, other.used))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Entry":
        return cls(str(data.get("name", "")), str(data["mod"]), int(data.get("trials", 0)),
                   list(data.get("records", [])), data.get("choice"), str(data.get("used") or ""))


def record_id(record: list) -> str:
    """A record's identity: its trace (run times and target aside)."""
    return hashlib.sha1(json.dumps(record[0], sort_keys=True).encode()).hexdigest()[:16]


def _mean_run_s(record: list) -> float:
    run_secs = record[1] if len(record) > 1 else None
    values = [float(v) for v in run_secs or []]
    return sum(values) / len(values) if values else float("inf")


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _iso_before(seconds: float) -> str:
    then = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)
    return then.isoformat(timespec="milliseconds")


class TuningDatabase:
    """The database directory of one key; see the module docstring.

    max_bytes  what the databases under `root` may take together (tuning.max_database_mb);
               None: no bound (a database of its own, for a benchmark or a test)
    """

    def __init__(self, root: Path, key: DatabaseKey, max_bytes: int | None = None):
        self.key = key
        self.dir = Path(root) / key.name
        self.path = self.dir / FILE_NAME
        self.max_bytes = max_bytes

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        """A lock on a file beside the database: jobs of two children never interleave a
        read-merge-write (flock is released by the kernel if a child dies holding it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / LOCK_NAME, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @property
    def empty(self) -> bool:
        """No record was ever written here (nothing a job could apply)."""
        return not self.path.exists()

    def load(self, using: Collection[str] = ()) -> "Snapshot":
        """What the file holds. `using`: the workloads a job is about to apply or tune; their
        use is recorded (a write, when the last recorded use is over USE_RESOLUTION_S old), so
        that the bound evicts others first. A failed write only costs that record."""
        with self._locked(exclusive=False):
            snapshot = self._read(self.path)
        stale = _iso_before(USE_RESOLUTION_S)
        touched = {w: dataclasses.replace(entry, used=now_iso()) for w, entry in snapshot.entries.items()
                   if w in using and entry.used < stale}
        if touched:
            try:
                self.merge(Snapshot(touched), keep=using)
            except OSError as exc:
                log.warning("could not record the use of %d workloads in %s: %s", len(touched), self.path, exc)
            snapshot.entries.update(touched)
        return snapshot

    def merge(self, update: "Snapshot", keep: Collection[str] = ()) -> "Snapshot":
        """Merge `update` into the file; returns what the file now holds. A write that would
        pass the bound evicts least recently used workloads, those in `keep` (the writing
        job's) last: see agent.compile.tuning.bound."""
        from agent.compile.tuning import bound  # it imports this module

        with self._locked(exclusive=True):
            merged, text = bound.fit(self, self._read(self.path).merged(update), keep)
            self._write(text)
            return merged

    def _read(self, path: Path) -> "Snapshot":
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return Snapshot()
        except (OSError, ValueError) as exc:  # written by rename, so only a damaged disk gets here
            log.warning("ignoring the unreadable tuning database %s: %s", path, exc)
            return Snapshot()
        return self._snapshot(data, str(path))

    def _snapshot(self, data: Any, where: str) -> "Snapshot":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            log.warning("ignoring %s: not a %s file", where, FORMAT)
            return Snapshot()
        if data.get("key") != self.key.fields:
            log.warning("ignoring %s: its records are for %s, not %s", where, data.get("key"), self.key.fields)
            return Snapshot()
        try:
            entries = {str(h): Entry.from_json(e) for h, e in data.get("workloads", {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring %s: %s", where, exc)
            return Snapshot()
        stats, models = data.get("stats"), data.get("models")
        return Snapshot(entries, stats if isinstance(stats, dict) else {},
                        models if isinstance(models, dict) else {})

    def text(self, snapshot: "Snapshot") -> str:
        """The file's text for `snapshot` (ASCII: its length is its size on disk)."""
        return json.dumps({"format": FORMAT, "key": self.key.fields, "stats": snapshot.stats,
                           "models": snapshot.models,
                           "workloads": {h: snapshot.entries[h].to_json() for h in sorted(snapshot.entries)}},
                          separators=SEPARATORS)

    def _write(self, text: str) -> None:
        """Write then rename: a reader, or a crash, sees the old file or the new, never half.
        A crash before the rename leaves the temporary file: bound.remove_stale_files."""
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{FILE_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):  # the rename itself, on filesystems that need it
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    # --- sharing through S3 -------------------------------------------------------------------
    def remote_uri(self, prefix_uri: str) -> str:
        from agent.storage import join

        return join(prefix_uri, f"{self.key.name}/{FILE_NAME}")

    def pull(self, prefix_uri: str, *, patience=None, client=None) -> int:
        """Merge the fleet's records (prefix_uri/<key name>/database.json) into this one;
        returns how many workloads the remote held. A missing object is an empty fleet. What
        the bound has no room for is evicted as in any write, least recently used first."""
        from agent.errors import ClientError
        from agent.storage import download

        uri = self.remote_uri(prefix_uri)
        self.dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.dir, prefix=".pull-") as tmp:
            try:
                fetched = download(uri, Path(tmp) / FILE_NAME, max_bytes=MAX_PULL_BYTES, patience=patience,
                                   client=client)
            except ClientError as exc:
                if exc.detail.startswith(MISSING_OBJECT):  # a missing bucket is still an error
                    log.info("no shared tuning records at %s yet", uri)
                    return 0
                raise
            remote = self._read(fetched.path)
        self.merge(remote)
        log.info("pulled %d workloads' tuning records from %s", len(remote.entries), uri)
        return len(remote.entries)

    def push(self, prefix_uri: str, *, patience=None, client=None) -> int:
        """Pull and merge first (so a device does not overwrite what others pushed since),
        then upload the merged file; returns how many workloads it holds. Two devices
        pushing at the same moment can still lose one's new records: they are tuned again.
        What this device's bound evicted leaves the object too, until a device that still
        holds it pushes."""
        from agent.storage import upload

        self.pull(prefix_uri, patience=patience, client=client)
        uri = self.remote_uri(prefix_uri)
        with self._locked(exclusive=False):
            snapshot = self._read(self.path)
            with tempfile.TemporaryDirectory(dir=self.dir, prefix=".push-") as tmp:
                copy = Path(tmp) / FILE_NAME
                copy.write_text(self.text(snapshot))
                upload(copy, uri, patience=patience, client=client)
        log.info("pushed %d workloads' tuning records to %s", len(snapshot.entries), uri)
        return len(snapshot.entries)


@dataclasses.dataclass
class Snapshot:
    """The database's contents at one moment."""

    entries: dict[str, Entry] = dataclasses.field(default_factory=dict)
    stats: dict = dataclasses.field(default_factory=dict)
    models: dict[str, dict] = dataclasses.field(default_factory=dict)

    def merged(self, other: "Snapshot") -> "Snapshot":
        entries = dict(self.entries)
        for workload, entry in other.entries.items():
            entries[workload] = entries[workload].merged(entry) if workload in entries else entry.merged(entry)
        models = dict(self.models)
        for model, plan in other.models.items():
            models[model] = _newer(models.get(model), plan)
        return Snapshot(entries, dict(_newer(self.stats, other.stats) or {}), models)


def _newer(a: dict | None, b: dict | None) -> dict | None:
    if not a or not b:
        return a or b
    return b if b.get("at", "") > a.get("at", "") else a
