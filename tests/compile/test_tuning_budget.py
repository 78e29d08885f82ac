"""A job's tuning budget: the request's CompilerOptions, the agent's [tuning] settings, the job's time."""
from __future__ import annotations

import pytest

from agent.compile.tuning import job_budget
from agent.config import AgentConfig, TuningConfig
from agent.errors import ConfigError

SETTINGS = TuningConfig(default_seconds=600, max_seconds=3600, rest_of_job_seconds=180)


@pytest.mark.parametrize("options, seconds_left, seconds, trials, source", [
    ({}, 86400, 600, None, "the agent's tuning.default_seconds"),
    ({"tuning_seconds": 1800}, 86400, 1800, None, "CompilerOptions tuning_seconds"),
    ({"tuning_seconds": 7200}, 86400, 3600, None, "cut to 3600 s by tuning.max_seconds"),
    ({"tuning_seconds": 1800}, 900, 720, None, "cut to 720 s by MaxRuntimeInSeconds less 180 s"),
    ({}, 600, 420, None, "cut to 420 s by MaxRuntimeInSeconds"),
    ({"tuning_trials": 500}, 86400, 3600, 500, "CompilerOptions tuning_trials"),
    ({"tuning_trials": 500, "tuning_seconds": 60}, 86400, 60, 500, "CompilerOptions tuning_seconds"),
])
def test_the_budget_is_what_was_asked_within_the_job_and_the_device_limits(options, seconds_left, seconds,
                                                                            trials, source):
    budget = job_budget(options, SETTINGS, seconds_left)
    assert budget.tunes and budget.seconds == seconds and budget.trials == trials
    assert source in budget.source


@pytest.mark.parametrize("options, seconds_left, settings", [
    ({"tuning_seconds": 0}, 86400, SETTINGS),
    ({"tuning_trials": 0}, 86400, SETTINGS),
    ({}, 86400, TuningConfig(default_seconds=0)),
    ({"tuning_seconds": 600}, 150, SETTINGS),          # the later stages need all that is left
    ({"tuning_seconds": 600}, 86400, TuningConfig(max_seconds=0)),
])
def test_no_tuning_when_nothing_may_be_spent(options, seconds_left, settings):
    budget = job_budget(options, settings, seconds_left)
    assert not budget.tunes and budget.seconds is None and budget.trials is None


@pytest.mark.parametrize("section, words", [
    ({"default_seconds": -1}, "tuning.default_seconds: must be a number of seconds"),
    ({"max_seconds": float("inf")}, "tuning.max_seconds"),
    ({"share_uri": "https://example.com/x"}, "tuning.share_uri: must be an s3://"),
    ({"share_uri": "s3://b/p", "database": False}, "needs tuning.database = true"),
    ({"max_database_mb": 0}, "tuning.max_database_mb: must be a whole number of MiB, 1 or more; got 0"),
    ({"max_database_mb": 0.5}, "tuning.max_database_mb: must be a whole number of MiB"),
])
def test_bad_tuning_settings_name_the_key(section, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.").replace("/", "/")):
        AgentConfig(tuning=TuningConfig(**section))


def test_the_tuning_section_comes_from_the_file_and_the_environment(tmp_path, monkeypatch):
    from agent.configfile import load_config

    path = tmp_path / "agent.toml"
    path.write_text('[tuning]\ndefault_seconds = 1200\nshare_uri = "s3://fleet/tuning"\nmax_database_mb = 16\n')
    monkeypatch.delenv("NEO_AGENT_TUNING_DEFAULT_SECONDS")   # tests/conftest.py's 0 would win over the file
    monkeypatch.setenv("NEO_AGENT_TUNING_MAX_SECONDS", "2400")
    config = load_config(path)
    assert (config.tuning.default_seconds, config.tuning.max_seconds, config.tuning.share_uri) == \
        (1200, 2400, "s3://fleet/tuning")
    assert config.tuning.max_database_mb == 16
    monkeypatch.setenv("NEO_AGENT_TUNING_MAX_DATABASE_MB", "32")
    assert load_config(path).tuning.max_database_mb == 32


@pytest.mark.parametrize("file_value, env_value, words", [
    ('"64"', None, r"agent\.toml:tuning\.max_database_mb: expected an integer, got a string"),
    ("0", None, r"agent\.toml:tuning\.max_database_mb: must be a whole number of MiB, 1 or more; got 0"),
    (None, "lots", r"NEO_AGENT_TUNING_MAX_DATABASE_MB: cannot read 'lots' as int"),
    (None, "-1", r"tuning\.max_database_mb \(NEO_AGENT_TUNING_MAX_DATABASE_MB\): must be a whole number"),
])
def test_a_bad_database_bound_is_refused_by_name_from_the_file_and_the_environment(tmp_path, monkeypatch,
                                                                                   file_value, env_value, words):
    from agent.configfile import load_config

    path = tmp_path / "agent.toml"
    path.write_text(f"[tuning]\nmax_database_mb = {file_value}\n" if file_value else "")
    if env_value is not None:
        monkeypatch.setenv("NEO_AGENT_TUNING_MAX_DATABASE_MB", env_value)
    with pytest.raises(ConfigError, match=words):
        load_config(path)


@pytest.mark.parametrize("window_s, batch", [
    (10_000, 64),   # plenty of time: TVM's usual round of 64
    (200, 48),      # (200 - 5 s of set-up) / (4 x 1 s): a round fits even at 4x the average cost
    (40, 8),        # a nearly spent budget still measures a useful round
])
def test_a_search_round_fits_in_what_is_left_even_for_a_costly_task(window_s, batch):
    """The deadline is checked between rounds: a round sized for the average cost per candidate
    ran 100 s past it on a task whose candidates cost 4x that, and left no time to compare."""
    import time

    from agent.compile.tuning.job import TuningJob

    job = TuningJob(None, None, float("inf"), None, 64, 1)
    job.seconds_per_trial = 1.0
    assert job._batch(time.time() + window_s) == batch
    assert job._batch(float("inf")) == 64


def test_the_time_kept_after_tuning_compares_every_workload_that_will_hold_records():
    """Step 5 must decide every workload with records, or the warm recompile does it (YOLOv8n's
    and PP-OCRv4 rec's took 78 and 74 s): the reserve counts the planned workloads and those
    an earlier job left undecided, once each, plus one for the round that ends late."""
    from agent.compile import schedule
    from agent.compile.tuning.database import Entry, record_id
    from agent.compile.tuning.job import COMPARE_S_PER_TASK, REBUILD_FACTOR, SAFETY_S, TuningJob

    job = TuningJob(None, None, float("inf"), None, 64, 1)
    job.tasks = {w: object() for w in ("a", "b", "c", "d")}
    record = ["trace", "workload"]
    job.entries = {
        "b": Entry("b", "", 64, [record]),                                   # tuned, never compared
        "c": Entry("c", "", 64, [record], {"rule": "cpu-tile/0", "record": "x"}),  # an older rule's choice
    }
    job.entries["d"] = Entry("d", "", 64, [record], {"rule": schedule.RULE_VERSION, "record": record_id(record)})
    assert job._undecided_set() == {"b", "c"}
    base = REBUILD_FACTOR * 10.0 + SAFETY_S
    assert job._reserve_s(10.0, {"a": 64, "b": 32}) == base + COMPARE_S_PER_TASK * (3 + 1)
    assert job._reserve_s(10.0, {}) == base + COMPARE_S_PER_TASK * (2 + 1)
