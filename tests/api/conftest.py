"""Fixtures for the API tests: a real JobStore in tmp_path, a fake runner, a ticking clock."""
from __future__ import annotations

import pytest

from agent.api import CompilationService
from agent.config import AgentConfig
from agent.jobs.store import JobStore

from tests.api.helpers import ACCOUNT, REGION, X86_TARGETS, Clock, FakeRunner


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def config(tmp_path) -> AgentConfig:
    return AgentConfig(state_dir=tmp_path / "state", region=REGION, account=ACCOUNT, queue_limit=100)


@pytest.fixture
def store(tmp_path, clock):
    store = JobStore(tmp_path / "jobs.sqlite3", clock=clock)
    yield store
    store.close()


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def service(store, runner, config) -> CompilationService:
    return CompilationService(store, runner, config, channel="http", target_check=X86_TARGETS)
