"""Jobs that tune: the request's budget reaches MetaSchedule, records persist and are shared.

One real tuning job runs in CI (64 trials of the sample model, about a minute on 2 cores);
what tuning gains on real models is measured by benchmarks/suite.py, never asserted here.
"""
from __future__ import annotations

import json

import pytest

from agent import pipeline
from agent.config import AgentConfig, BenchConfig, TuningConfig
from agent.samples import make_sample_archive
from benchmarks.suite import library_digest
from tests.test_pipeline import RecordingReporter, make_job

TRIALS = 64   # plan.MIN_TASK_TRIALS: fewer would be planned for no kernel at all


def _run(tmp_path, state, archive, fleet, name, options):
    config = AgentConfig(state_dir=state, bench=BenchConfig(min_iterations=5, min_seconds=0.1, warmup_runs=1),
                         tuning=TuningConfig(share_uri=fleet.as_uri()))
    job = make_job(archive.as_uri(), (tmp_path / "out" / name).as_uri(), TargetDevice="ml_c5",
                   CompilerOptions=json.dumps(options))
    reporter = RecordingReporter()
    result = pipeline.run(job, config, tmp_path / "work" / name, reporter)
    return result.metrics, reporter, library_digest(next((tmp_path / "out" / name).glob("*.tar.gz")))


@pytest.fixture(scope="module")
def tuned_jobs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tuning-jobs")
    archive = make_sample_archive(tmp_path / "in")
    fleet = tmp_path / "fleet"
    options = {"tuning_trials": TRIALS}
    first = _run(tmp_path, tmp_path / "device-a", archive, fleet, "first", options)
    again = _run(tmp_path, tmp_path / "device-a", archive, fleet, "again", options)
    other = _run(tmp_path, tmp_path / "device-b", archive, fleet, "other", options)
    return first, again, other


def test_a_job_tunes_within_the_trials_its_request_gives(tuned_jobs):
    (metrics, reporter, _), _, _ = tuned_jobs
    tuning = metrics["tuning"]
    assert tuning["budget"]["trials"] == TRIALS and "CompilerOptions tuning_trials" in tuning["budget"]["source"]
    assert 0 < tuning["trials_measured"] <= TRIALS
    assert metrics["verification"]["passed"]
    assert metrics["tuned"] == bool(tuning["tuned_kernels"])
    tasks = [t for t in tuning["tasks"] if t["trials_new"]]
    assert tasks and all(t["rule_us"] and t["used"] in ("rule", "tuned") for t in tasks)
    compile_messages = [m for stage, _, m in reporter.events if stage == "compile"]
    assert any(m.startswith(f"tuning for up to") and f"or {TRIALS} trials" in m for m in compile_messages)
    assert any(f"({tuning['trials_measured']} trials" in m for m in compile_messages)


def test_the_next_job_on_the_device_reuses_the_records(tuned_jobs):
    (first, _, first_so), (again, _, again_so), _ = tuned_jobs
    assert again["tuning"]["trials_measured"] == 0
    # a warm recompile builds its tuned build's machine code exactly: the suite's warm / tuned
    # latency is then the same model.so timed twice
    assert again_so == first_so
    assert again["tuning"]["tuned_kernels"] == first["tuning"]["tuned_kernels"]
    assert again["tuning"]["database"]["workloads"] == first["tuning"]["database"]["workloads"] > 0
    assert again["verification"]["passed"]


def test_an_identical_device_pulls_the_fleet_s_records_instead_of_tuning(tuned_jobs):
    (first, _, first_so), _, (other, _, other_so) = tuned_jobs
    assert first["tuning"]["shared"]["pushed_workloads"] == first["tuning"]["database"]["workloads"]
    assert other["tuning"]["shared"]["pulled_workloads"] == first["tuning"]["database"]["workloads"]
    assert other["tuning"]["trials_measured"] == 0
    assert other["tuning"]["tuned_kernels"] == first["tuning"]["tuned_kernels"]
    assert "pushed_workloads" not in other["tuning"]["shared"]   # nothing new to push
    assert other_so == first_so


def test_a_job_that_asks_no_tuning_gets_none(tmp_path):
    archive = make_sample_archive(tmp_path / "in")
    metrics, reporter, _ = _run(tmp_path, tmp_path / "state", archive, tmp_path / "fleet", "off", {"tuning_seconds": 0})
    assert metrics["tuning"]["stopped"] == "off" and metrics["tuning"]["trials_measured"] == 0
    assert metrics["tuning"]["budget"] == {"seconds": None, "trials": None, "source": "CompilerOptions tuning_seconds"}
    assert "shared" not in metrics["tuning"] and not (tmp_path / "fleet").exists()
    assert not any("tuning" in m for stage, _, m in reporter.events if stage == "compile")
