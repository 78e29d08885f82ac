from __future__ import annotations

import time

import pytest

from agent.config import AgentConfig, BenchConfig
from agent.jobs.job import Job, Status
from agent.jobs.store import JobStore
from agent.runner.runner import Runner
from tests.storage.aws_like_s3 import aws_like_s3, aws_like_s3_server  # noqa: F401  (fixtures)

SCRIPTED = "tests.runner.scripted_pipeline"


def make_config(tmp_path, **overrides) -> AgentConfig:
    values = dict(
        state_dir=tmp_path / "state",
        stop_grace_s=1.0,
        deadline_grace_s=1.0,
        pipeline_module=SCRIPTED,
        bench=BenchConfig(min_iterations=5, min_seconds=0.1, warmup_runs=1, warmup_seconds=0.0),
    )
    values.update(overrides)
    return AgentConfig(**values)


def scripted_job(name: str, script: str, **stopping) -> Job:
    request = {
        "CompilationJobName": name,
        "RoleArn": "arn:aws:iam::123456789012:role/neo",
        "InputConfig": {"S3Uri": "file:///nowhere/model.tar.gz", "Framework": "ONNX"},
        "OutputConfig": {"S3OutputLocation": "file:///nowhere/out", "TargetDevice": "ml_c5"},
        "StoppingCondition": stopping or {"MaxRuntimeInSeconds": 60},
        "Tags": [{"Key": "test-script", "Value": script}],
    }
    return Job(name=name, arn=f"arn:aws:sagemaker:us-east-1:000000000000:compilation-job/{name}", request=request)


def wait_for(store: JobStore, name: str, predicate, timeout: float = 30.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(name)
        if predicate(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {name} never reached the expected state; last: {store.get(name)}")


def wait_terminal(store, name, timeout=30.0) -> Job:
    return wait_for(store, name, lambda j: j.status.terminal, timeout)


@pytest.fixture
def harness(tmp_path):
    """A store and a runner on the scripted pipeline; shut down after the test."""
    made = []

    def start(**overrides):
        config = make_config(tmp_path, **overrides)
        store = JobStore(config.db_path)
        runner = Runner(store, config)
        runner.start()
        made.append((store, runner))
        return store, runner

    yield start
    for store, runner in made:
        runner.shutdown(timeout=10)
        store.close()


def submit(store, runner, job: Job) -> Job:
    store.create(job)
    runner.enqueue(job.name)
    return job


__all__ = ["Status", "scripted_job", "wait_for", "wait_terminal", "submit", "make_config"]
