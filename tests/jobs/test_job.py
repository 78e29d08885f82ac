"""The Job's state machine and its store."""
from __future__ import annotations

import itertools
import threading

import pytest

from agent.errors import ResourceInUse, ResourceNotFound
from agent.jobs.events import EventBus
from agent.jobs.job import ALLOWED, TERMINAL, IllegalTransition, Job, Status, check_transition
from agent.jobs.store import JobStore


def job(name="job-1", **kw):
    return Job(name=name, arn=f"arn:aws:sagemaker:us-east-1:000000000000:compilation-job/{name.lower()}",
               request={"CompilationJobName": name, "StoppingCondition": {}}, **kw)


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


@pytest.mark.parametrize("old,new", list(itertools.product(Status, Status)))
def test_every_transition_is_allowed_or_refused(old, new):
    if new in ALLOWED[old]:
        check_transition(old, new)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(old, new)


def test_terminal_states_have_no_way_out():
    assert {s for s in Status if not ALLOWED[s]} == TERMINAL


def test_the_happy_path_and_stop_path_are_allowed():
    for path in (
        [Status.STARTING, Status.INPROGRESS, Status.COMPLETED],
        [Status.STARTING, Status.INPROGRESS, Status.FAILED],
        [Status.STARTING, Status.INPROGRESS, Status.STOPPING, Status.STOPPED],
        [Status.STARTING, Status.STOPPED],
        [Status.STARTING, Status.FAILED],
    ):
        for a, b in zip(path, path[1:]):
            check_transition(a, b)


def test_default_max_runtime_is_one_day():
    assert job().max_runtime == 86400 and job().max_pending is None


def test_store_round_trip_survives_reopen(tmp_path):
    s = JobStore(tmp_path / "db")
    s.create(job("Alpha"))
    s.transition("Alpha", Status.INPROGRESS, stage="compile", note="started")
    s.close()
    s2 = JobStore(tmp_path / "db")
    got = s2.get("alpha")
    assert got.name == "Alpha" and got.status == Status.INPROGRESS and got.stage == "compile"
    assert got.notes == ["started"]
    s2.close()


def test_names_are_unique_case_insensitively(store):
    store.create(job("MyJob"))
    with pytest.raises(ResourceInUse):
        store.create(job("myjob"))


def test_illegal_transition_changes_nothing(store):
    store.create(job())
    store.transition("job-1", Status.INPROGRESS)
    store.transition("job-1", Status.COMPLETED)
    with pytest.raises(IllegalTransition):
        store.transition("job-1", Status.INPROGRESS)
    assert store.get("job-1").status == Status.COMPLETED


def test_unknown_job_is_resource_not_found(store):
    with pytest.raises(ResourceNotFound):
        store.get("nope")
    with pytest.raises(ResourceNotFound):
        store.delete("nope")


def test_events_follow_commits(tmp_path):
    bus = EventBus()
    seen = []
    bus.subscribe(lambda e: seen.append((e.kind, e.status, store.get(e.job_name).status.value)))
    store = JobStore(tmp_path / "db", bus)
    store.create(job())
    store.update("job-1", stage="fetch", percent=1.0)
    store.transition("job-1", Status.INPROGRESS)
    assert seen == [("status", "STARTING", "STARTING"), ("progress", "STARTING", "STARTING"),
                    ("status", "INPROGRESS", "INPROGRESS")]
    store.close()


def test_broken_subscriber_does_not_break_the_store(store):
    store.events.subscribe(lambda e: 1 / 0)
    store.create(job())
    assert store.get("job-1").status == Status.STARTING


def test_concurrent_creates_keep_every_job(store):
    def make(i):
        store.create(job(f"job-{i}"))

    threads = [threading.Thread(target=make, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count([Status.STARTING]) == 50
    assert sorted(j.seq for j in store.with_status([Status.STARTING])) == list(range(1, 51))
