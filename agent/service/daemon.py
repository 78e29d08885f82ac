"""`neo-agent run`: the agent as a long-running service, serving its transports until told to stop.

    sys.exit(Daemon(AgentConfig.load()).run())

Start: the agent first (store, runner, and the recovery of jobs from the last life), then each
transport, then one `ready:` line that names every endpoint. A transport that cannot start
(a port in use) stops the daemon before it says ready, with a ConfigError naming the key.

Stop, on SIGTERM or SIGINT, in stages (rq's request_stop, arq's grace period):
  1. the agent stops accepting work: CreateCompilationJob answers ServiceUnavailable (AWS's 503,
     which the SDKs retry) while Describe, List, Stop and Delete still answer;
  2. the runner stops: a running job's compile group gets SIGTERM, then SIGKILL after
     stop_grace_s, and the job ends FAILED with `ServerError: AgentShutdown`; queued jobs stay
     STARTING on disk and run after the next start;
  3. every transport stops, in reverse order of start, within TRANSPORT_STOP_TIMEOUT_S each:
     the HTTP listener closes, and the MQTT, IoT Core and Greengrass transports publish what
     they owe first, so the running job's final status leaves before the process does (what
     cannot be delivered stays in the outbox for the next start).
Then one summary line and exit 0. The whole budget is `shutdown_budget_s`: stop_grace_s +
RUNNER_STOP_MARGIN_S + TRANSPORT_STOP_TIMEOUT_S per transport (20 s with the defaults and the
HTTP endpoint alone); systemd/neo-agent.service's TimeoutStopSec is sized from it. A second
signal during shutdown forces it: the compile groups are killed and the process exits at once
with 128 + the signal number; the next start finds those jobs and fails them with
`ServerError: AgentRestart`.

Under systemd (Type=notify; agent.service.notify): READY=1 once the runner and every transport
have started; STATUS= follows the current job (agent.service.status); WATCHDOG=1 from the main
loop in `run`, the thread that waits for the stop signal, and only while the job store answers,
so a wedged agent goes quiet and systemd restarts it; STOPPING=1, asking for the whole budget,
when the shutdown begins. systemd stops watching the watchdog once a stop has begun.

Adding a transport (MQTT, IoT Core, ...): one more entry in `build_transports`, nothing else.
AWS IoT Core is reached one way or the other, never both: through the Greengrass nucleus (IPC,
agent/transports/greengrass.py) when the nucleus started the agent, which its environment shows
(AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT and SVCUID), else directly over mTLS when
iotcore.endpoint is set. IoT Jobs follows the same connection.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable

from agent.config import AgentConfig
from agent.jobs.job import Status
from agent.runner.process import kill_leftover_child
from agent.service.agent import Agent
from agent.service.notify import Notifier
from agent.service.status import ServiceStatus
from agent.transports.base import Transport

log = logging.getLogger(__name__)

EXIT_OK = 0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
TRANSPORT_STOP_TIMEOUT_S = 5.0  # stage 1: each transport's time to answer what it already read
RUNNER_STOP_MARGIN_S = 5.0  # stage 2 waits stop_grace_s (SIGTERM -> SIGKILL) plus this
STOP_SLACK_S = 5.0  # the rest of a shutdown: the summary, closing the store, the interpreter's exit
WAIT_SLICE_S = 1.0  # the main loop's wait; signals wake it sooner, a watchdog may shorten it


def shutdown_budget_s(config: AgentConfig, transports: int) -> float:
    """The longest an orderly shutdown takes: what systemd's stop timeout must allow."""
    return transports * TRANSPORT_STOP_TIMEOUT_S + config.stop_grace_s + RUNNER_STOP_MARGIN_S + STOP_SLACK_S


def build_transports(config: AgentConfig, agent: Agent) -> list[Transport]:
    """Every transport this agent serves, made from its configuration: the one extension point.

    Each gets the API made for its channel (`agent.api_for(name)`, so jobs record where they
    came from) and, where it reports back, `agent.events`. Constructing one validates its
    configuration (ConfigError naming the key); nothing connects or listens until start().
    """
    from agent.transports.http import HttpTransport

    transports: list[Transport] = []
    if config.http:  # NEO_AGENT_HTTP="" turns the endpoint off (a device reached only over MQTT, say)
        transports.append(
            HttpTransport(agent.api_for(HttpTransport.name), config.http, credentials=config.http_credentials,
                          tls_cert=config.http_tls_cert, tls_key=config.http_tls_key))
    if config.mqtt.enabled:  # a plain MQTT broker (mosquitto, say)
        from agent.transports.mqtt import MqttTransport

        transports.append(MqttTransport.from_agent(agent))
    transports += _cloud_transports(config, agent)
    return transports


def _cloud_transports(config: AgentConfig, agent: Agent) -> list[Transport]:
    """AWS IoT Core and IoT Jobs: through the Greengrass nucleus when it started us, else over mTLS.

    Under Greengrass (its IPC socket and SVCUID in the environment) the nucleus's own connection
    is used: a second one with the same thing name as client id would keep displacing it, and
    needs a certificate the component does not have.
    """
    from agent.transports.greengrass_ipc import under_greengrass

    if under_greengrass():
        from agent.transports.greengrass import greengrass_transports

        if config.iotcore.enabled:
            log.warning("iotcore.endpoint is ignored: under Greengrass the agent uses the nucleus's connection to "
                        "AWS IoT Core (a second one with the thing's client id would keep displacing it)")
        return greengrass_transports(agent)
    if config.iotcore.enabled:  # AWS IoT Core, and IoT Jobs on the same connection
        from agent.transports.iotcore import iotcore_transports

        return iotcore_transports(agent)
    return []


class Daemon:
    """The agent and its transports, started and stopped in order; signals drive `run`."""

    def __init__(
        self,
        config: AgentConfig,
        transport_factory: Callable[[AgentConfig, Agent], list[Transport]] = build_transports,
        notifier: Notifier | None = None,
    ):
        self.config = config
        self.transport_factory = transport_factory
        self.notifier = notifier if notifier is not None else Notifier.from_environment()
        self.status = ServiceStatus(self.notifier.status)
        self.agent: Agent | None = None
        self.transports: list[Transport] = []
        self._stop_requested = threading.Event()
        self._shutting_down = False
        self._unsubscribe: Callable[[], None] | None = None
        self._store_failing = False

    # --- the foreground loop ----------------------------------------------------------
    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, shut down; the exit code. Call from the main thread."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            try:
                self.start()
            except BaseException as exc:
                self.notifier.status(f"failed to start: {exc}")
                raise
            watchdog_s = self.notifier.watchdog_interval()
            wait_s = min(WAIT_SLICE_S, watchdog_s / 2) if watchdog_s else WAIT_SLICE_S
            self._tick()
            while not self._stop_requested.wait(wait_s):
                self._tick()
            self.shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.notifier.close()
        return EXIT_OK

    def _tick(self) -> None:
        """One turn of the main loop: the watchdog ping, if the job store answers; a held-back STATUS."""
        try:
            self.agent.store.count([Status.STARTING])
        except Exception:
            if not self._store_failing:  # once, not every turn until the watchdog fires
                log.exception("the job store did not answer; withholding the watchdog ping")
            self._store_failing = True
        else:
            self._store_failing = False
            self.notifier.watchdog()
        self.status.flush()

    def request_stop(self) -> None:
        """Begin the two-stage shutdown (what the first SIGTERM or SIGINT does)."""
        self._stop_requested.set()

    def _on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if not self._stop_requested.is_set():
            log.info("%s: shutting down (send it again to force)", name)
            self.request_stop()
            return
        self._force_exit(signum)

    def _force_exit(self, signum: int) -> None:
        """The second signal: kill the compile groups and leave now, without the orderly steps."""
        killed = 0
        try:
            if self.agent is not None:
                for job in self.agent.store.with_status([Status.INPROGRESS, Status.STOPPING]):
                    killed += kill_leftover_child(job.pid)
        except Exception:  # the store may be closing under us; the next start cleans up anyway
            pass
        log.warning("%s again: forced exit; killed %d compile process group(s); the next start fails "
                    "their jobs with AgentRestart", signal.Signals(signum).name, killed)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(128 + signum)

    # --- the two halves ---------------------------------------------------------------
    def start(self) -> None:
        agent = Agent(self.config)
        try:
            self.transports = self.transport_factory(self.config, agent)
        except BaseException:
            agent.store.close()
            raise
        # Seeded before the runner starts, subscribed before recovery's events: nothing is missed.
        self.status.seed(agent.store.with_status([Status.STARTING, Status.INPROGRESS, Status.STOPPING]))
        self._unsubscribe = agent.events.subscribe(self.status.on_event)
        self.notifier.status("starting: recovering jobs, starting transports")
        self.agent = agent.start()
        started: list[Transport] = []
        try:
            for transport in self.transports:
                transport.start()
                started.append(transport)
        except BaseException:
            self.transports = started  # stop only what started
            self.shutdown()
            raise
        endpoints = ", ".join(_describe(transport) for transport in self.transports) or "no transports"
        log.info("ready: %s; state %s", endpoints, self.config.state_dir)
        self.notifier.ready(self.status.take())

    def shutdown(self) -> None:
        """Stage 1: no new jobs. Stage 2: the runner stops. Stage 3: the transports, after
        they have published the final statuses. Safe to call twice."""
        if self._shutting_down or self.agent is None:
            return
        self._shutting_down = True
        began = time.monotonic()
        self.status.freeze()
        self.notifier.stopping(f"stopping: {self.status.line()}",
                               extend_timeout_s=shutdown_budget_s(self.config, len(self.transports)))
        agent = self.agent
        agent.stop_accepting()
        running = [job.name for job in agent.store.with_status([Status.INPROGRESS, Status.STOPPING])]
        agent.runner.shutdown(self.config.stop_grace_s + RUNNER_STOP_MARGIN_S)
        for transport in reversed(self.transports):
            try:
                transport.stop(TRANSPORT_STOP_TIMEOUT_S)
            except Exception:
                log.exception("transport %s failed to stop cleanly", transport.name)
        ended = [agent.store.find(name) for name in running]
        failed = sum(1 for job in ended if job is not None and "AgentShutdown" in (job.failure_reason or ""))
        unfinished = sum(1 for job in ended if job is not None and not job.status.terminal)
        queued = agent.store.count([Status.STARTING])
        if self._unsubscribe is not None:
            self._unsubscribe()
        agent.shutdown()
        summary = (f"{len(running)} running job(s) ended ({failed} FAILED with AgentShutdown)"
                   f"{f', {unfinished} still unfinished' if unfinished else ''}, "
                   f"{queued} queued job(s) kept for the next start")
        log.info("stopped in %.1f s: %s", time.monotonic() - began, summary)
        self.notifier.status(f"stopped: {summary}")


def _describe(transport: Transport) -> str:
    url = getattr(transport, "url", "")
    return f"{transport.name} {url}" if url else transport.name
