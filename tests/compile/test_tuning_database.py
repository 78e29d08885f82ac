"""The tuning databases' bound on disk (agent.compile.tuning.bound): least recently used
workloads evicted whole, plans with them, other kinds of device's databases, the running
job's workloads last; files from before the bound; temporary files a killed write leaves.

Entries are built directly, each about 100 kB (a real convolution's is about 200 kB), so a
bound of a few hundred kB holds a few of them; nothing here tunes or imports TVM.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time

from agent.compile.tuning import bound, open_database
from agent.compile.tuning.database import (FILE_NAME, FORMAT, LOCK_NAME, DatabaseKey, Entry, Snapshot,
                                           TuningDatabase, now_iso)
from agent.compile.tuning.job import TuningJob

TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3", "num-cores": 2}
KEY = DatabaseKey.for_target("ml_c5", TARGET)
ENTRY_BYTES = 100_000


def _entry(name: str, used: str = "", choice_at: str | None = None) -> Entry:
    record = [[[["Step", [], [name], []]], []], [1e-3, 1e-3], TARGET, []]
    choice = {"winner": "tuned", "at": choice_at} if choice_at else None
    return Entry(name, "m" * ENTRY_BYTES, 64, [record], choice, used)


def _day(n: int) -> str:
    return f"2026-11-{n:02d}T00:00:00.000+00:00"


def _bounded(tmp_path, entries: int, key: DatabaseKey = KEY) -> TuningDatabase:
    """A database whose bound holds `entries` entries and a little more."""
    return TuningDatabase(tmp_path, key, max_bytes=entries * (ENTRY_BYTES + 600) + 1000)


def test_the_least_recently_used_workloads_go_first_and_the_file_stays_under_the_bound(tmp_path, caplog):
    db = _bounded(tmp_path, 3)
    db.merge(Snapshot({"w-old": _entry("old", _day(1)), "w-mid": _entry("mid", _day(2)),
                       "w-new": _entry("new", _day(3))}))
    assert set(db.load().entries) == {"w-old", "w-mid", "w-new"}  # three fit
    with caplog.at_level(logging.INFO, logger="agent.compile.tuning.bound"):
        db.merge(Snapshot({"w-newest": _entry("newest", _day(4))}))
    assert set(db.load().entries) == {"w-mid", "w-new", "w-newest"}
    assert "evicted 1 workloads (old (last used 2026-11-01" in caplog.text
    for day in range(5, 12):  # and so on: the file never passes the bound
        db.merge(Snapshot({f"w{day}": _entry(f"k{day}", _day(day))}))
        assert db.path.stat().st_size <= db.max_bytes
    assert set(db.load().entries) == {"w9", "w10", "w11"}


def test_a_use_is_recorded_on_load_so_used_workloads_outlive_newer_ones(tmp_path):
    db = _bounded(tmp_path, 3)
    db.merge(Snapshot({"w1": _entry("a", _day(1)), "w2": _entry("b", _day(2)), "w3": _entry("c", _day(3))}))
    db.load(using={"w1"})  # a job applies w1 today
    used = db.load().entries["w1"].used
    assert used > _day(3)
    written = db.path.stat().st_mtime_ns
    db.load(using={"w1"})  # again within the hour: nothing to write
    assert db.path.stat().st_mtime_ns == written and db.load().entries["w1"].used == used
    db.merge(Snapshot({"w4": _entry("d", _day(4))}))
    assert set(db.load().entries) == {"w1", "w3", "w4"}  # w2 is now the least recently used


def test_the_running_jobs_workloads_go_last(tmp_path):
    db = _bounded(tmp_path, 3)
    db.merge(Snapshot({"w1": _entry("a", _day(1)), "w2": _entry("b", _day(2)), "w3": _entry("c", _day(3))}))
    db.merge(Snapshot({"w4": _entry("d", _day(4))}), keep={"w1", "w4"})
    assert set(db.load().entries) == {"w1", "w3", "w4"}


def test_a_job_keeps_its_own_entry_when_the_bound_has_no_room_even_for_it(tmp_path):
    db = TuningDatabase(tmp_path, KEY, max_bytes=ENTRY_BYTES // 2)
    job = TuningJob(None, db, float("inf"), None, 64, 1)
    job.tasks = {"w1": None}
    job._save({"w1": _entry("a", _day(1))})
    assert db.load().entries == {} and db.path.stat().st_size <= db.max_bytes
    assert job.entries["w1"].name == "a"  # this job still applies what it tuned


def test_a_plan_goes_with_the_last_workload_it_names(tmp_path):
    db = _bounded(tmp_path, 2)
    plan = {"budget_s": 600.0, "trials": None, "at": _day(1)}
    db.merge(Snapshot({"w1": _entry("a", _day(1)), "w2": _entry("b", _day(2))}, {},
                      {"model-a": {**plan, "planned": {"w1": 64}},
                       "model-ab": {**plan, "planned": {"w1": 64, "w2": 64}}}))
    db.merge(Snapshot({"w3": _entry("c", _day(3))}, {}, {"model-c": {**plan, "planned": {"w3": 64, "w4": 64}},
                                                          "model-d": {**plan, "planned": {"w4": 64}}}),
             keep={"w3", "w4"})
    snapshot = db.load()
    assert set(snapshot.entries) == {"w2", "w3"}
    # model-a named only the evicted w1; model-d names a workload its job has yet to tune
    assert set(snapshot.models) == {"model-ab", "model-c", "model-d"}


def test_another_kind_of_devices_database_is_evicted_whole_unless_in_use(tmp_path):
    other_key = DatabaseKey.for_target("ml_c5", {**TARGET, "mcpu": "skylake"})
    other = _bounded(tmp_path, 2, other_key)
    other.merge(Snapshot({"s1": _entry("s1", _day(1)), "s2": _entry("s2", _day(2))}))
    os.utime(other.path, (time.time() - 86400, time.time() - 86400))  # last used yesterday
    ours = _bounded(tmp_path, 2)
    with open(other.dir / LOCK_NAME, "a+") as handle:  # a job of that kind is running
        fcntl.flock(handle, fcntl.LOCK_SH)
        ours.merge(Snapshot({"w1": _entry("a", now_iso())}))
        fcntl.flock(handle, fcntl.LOCK_UN)
    assert other.path.exists() and ours.load().entries == {}  # no room beside a database in use
    ours.merge(Snapshot({"w1": _entry("a", now_iso()), "w2": _entry("b", now_iso())}))
    assert not other.path.exists() and other.load().entries == {}  # least recently used: all of it
    assert set(ours.load().entries) == {"w1", "w2"}
    assert ours.path.stat().st_size <= ours.max_bytes


def test_a_database_from_before_the_bound_loads_and_is_evicted_by_its_last_comparison(tmp_path):
    db = _bounded(tmp_path, 2)
    db.dir.mkdir(parents=True)
    old = {"w-unknown": _entry("unknown"), "w-compared": _entry("compared", choice_at=_day(5))}
    workloads = {w: {k: v for k, v in e.to_json().items() if k != "used"} for w, e in old.items()}
    db.path.write_text(json.dumps({"format": FORMAT, "key": KEY.fields, "stats": {}, "models": {},
                                   "workloads": workloads}))
    loaded = db.load().entries
    assert set(loaded) == {"w-unknown", "w-compared"} and loaded["w-unknown"].used == ""
    assert loaded["w-compared"].last_used() == _day(5)
    db.merge(Snapshot({"w-new": _entry("new", _day(6))}))
    assert set(db.load().entries) == {"w-compared", "w-new"}  # no time at all is the oldest


def test_stale_temporary_files_go_when_a_database_is_opened_and_fresh_ones_stay(tmp_path):
    state = tmp_path / "state"
    db = open_database(state, "ml_c5", TARGET)
    db.merge(Snapshot({"w1": _entry("a", _day(1))}))
    elsewhere = state / "tuning" / "ml_c5-old-tvm"
    elsewhere.mkdir()
    stale = [db.dir / f".{FILE_NAME}.killed.tmp", elsewhere / f".{FILE_NAME}.killed.tmp"]
    pull = db.dir / ".pull-killed"
    pull.mkdir()
    stale += [pull / f".{FILE_NAME}.x.part", pull]
    for path in stale:
        if not path.is_dir():
            path.write_text("half")
    fresh = [db.dir / f".{FILE_NAME}.writing.tmp", db.dir / ".push-running"]
    fresh[0].write_text("half")
    fresh[1].mkdir()
    unrelated = db.dir / "notes.tmp"
    unrelated.write_text("not ours")
    an_hour_ago = time.time() - 3600
    for path in [*stale, unrelated]:
        os.utime(path, (an_hour_ago, an_hour_ago))
    open_database(state, "ml_c5", TARGET)
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in fresh) and unrelated.exists()
    assert set(db.load().entries) == {"w1"} and (db.dir / LOCK_NAME).exists()


def test_a_pull_directory_with_a_download_still_growing_stays(tmp_path):
    folder = tmp_path / "tuning" / "key"
    pull = folder / ".pull-live"
    pull.mkdir(parents=True)
    (pull / f".{FILE_NAME}.x.part").write_text("downloading")
    an_hour_ago = time.time() - 3600
    os.utime(pull, (an_hour_ago, an_hour_ago))  # the folder is old; the file in it is not
    assert bound.remove_stale_files(tmp_path / "tuning") == [] and pull.exists()
