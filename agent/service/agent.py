"""The agent as one object: store, event stream, runner and API, started and stopped together.

    with Agent(AgentConfig.load()) as agent:
        arn = agent.api.call("CreateCompilationJob", request)["CompilationJobArn"]

Transports get `agent.api` to answer requests and `agent.events` to report back; they never
touch the store or the runner directly.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from agent.api.service import CompilationService
from agent.config import AgentConfig
from agent.jobs.events import EventBus
from agent.jobs.store import JobStore
from agent.runner.runner import Runner

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, config: AgentConfig, clock: Callable[[], float] = time.time):
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        config.state_dir.chmod(0o700)
        self.events = EventBus()
        self.store = JobStore(config.db_path, self.events, clock=clock)
        self.runner = Runner(self.store, config, clock=clock)
        self._accepting = True
        self.api = self.api_for("")
        self._started = False

    def api_for(self, channel: str) -> CompilationService:
        """The API as a transport sees it: jobs it creates record `channel` as their origin."""
        return CompilationService(self.store, self.runner, self.config, channel=channel,
                                  accepting=lambda: self._accepting)

    def stop_accepting(self) -> None:
        """The first step of a shutdown: CreateCompilationJob answers ServiceUnavailable from now
        on; Describe, List, Stop and Delete still answer."""
        self._accepting = False

    def start(self) -> "Agent":
        self.runner.start()
        self._started = True
        log.info("agent started: state %s, queue limit %d, %d compile(s) at a time",
                 self.config.state_dir, self.config.queue_limit, self.config.concurrency)
        return self

    def shutdown(self, timeout: float | None = None) -> None:
        if not self._started:
            return
        self._started = False
        self.runner.shutdown(timeout)
        self.store.close()
        log.info("agent stopped")

    def __enter__(self) -> "Agent":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
