"""The outbox: pending until acknowledged, once per (job, status), seqs that only go up."""
from __future__ import annotations

from agent.transports.outbox import Outbox


def payload(seq: int) -> bytes:
    return f'{{"seq":{seq}}}'.encode()


def test_an_entry_stays_pending_until_acknowledged_and_survives_reopening(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path)
    entry = outbox.record("job-a", "COMPLETED", "neo/t/jobs/job-a/events", payload)
    assert entry is not None and entry.seq == 1 and entry.payload == b'{"seq":1}'
    outbox.close()
    reopened = Outbox(path)  # an agent restart
    assert reopened.pending() == [entry]
    reopened.ack(entry.id)
    assert reopened.pending() == []


def test_a_status_is_recorded_once_per_job(tmp_path):
    outbox = Outbox(tmp_path / "o.sqlite3")
    first = outbox.record("job-a", "COMPLETED", "t", payload)
    assert outbox.record("job-a", "COMPLETED", "t", payload) is None
    assert outbox.record("JOB-A", "COMPLETED", "t", payload) is None  # names are unique regardless of case
    outbox.ack(first.id)
    assert outbox.record("job-a", "COMPLETED", "t", payload) is None  # acknowledged still counts
    assert outbox.record("job-b", "COMPLETED", "t", payload).seq == 1


def test_seqs_increase_per_job_across_restarts_and_deletes(tmp_path):
    path = tmp_path / "o.sqlite3"
    outbox = Outbox(path)
    assert [outbox.next_seq("j") for _ in range(3)] == [1, 2, 3]
    assert outbox.record("j", "COMPLETED", "t", payload).seq == 4
    outbox.close()
    outbox = Outbox(path)
    assert outbox.record("j", "deleted", "t", payload).seq == 5
    outbox.new_generation("j")  # the name may now be used by a new job
    again = outbox.record("j", "COMPLETED", "t", payload)
    assert again is not None and again.seq == 6
    assert [e.key for e in outbox.pending()] == ["COMPLETED", "deleted", "COMPLETED"]


def test_pending_is_in_recording_order(tmp_path):
    outbox = Outbox(":memory:")
    keys = [("a", "STARTING"), ("b", "STARTING"), ("a", "INPROGRESS"), ("a", "FAILED")]
    for job, key in keys:
        outbox.record(job, key, f"t/{job}", payload)
    assert [(e.job, e.key) for e in outbox.pending()] == keys
