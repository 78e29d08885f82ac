"""The compile child: one process per job, in its own process group.

    python -m agent.runner.child SPEC.json FD

SPEC.json holds the job record, the agent's configuration and the job's deadline. The child
reports to the parent through the pipe FD, one JSON object a line:

    {"event": "stage", "stage": "compile", "percent": 20.0, "message": "..."}
    {"event": "derived", "data_input_config": "{\"input\": [1, 3, 64, 64]}"}
    {"event": "result", "artifact_uri": "...", "artifact_digest": "...", "metrics": {...}}
    {"event": "failure", "reason": "ClientError: InputConfiguration: ..."}
    {"event": "stopped"}

Two layers of time limit, as rq's work-horse has: the child raises at its own deadline
(SIGALRM), and the parent kills the whole group a grace period later if the child is stuck in
native code. SIGTERM (StopCompilationJob) unwinds the pipeline the same way.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

from agent.errors import ClientError, JobFailure, ServerError

PR_SET_PDEATHSIG = 1   # <linux/prctl.h>

# RLIMIT_DATA backstop, as a multiple of the configured limit: the parent's RSS watch trips
# first in normal operation; this stops an allocation burst faster than the watch can poll.
DATA_LIMIT_FACTOR = 2


class Stopped(BaseException):
    """SIGTERM arrived: StopCompilationJob, or the agent is shutting down."""


class DeadlineExceeded(BaseException):
    """MaxRuntimeInSeconds ran out inside the child."""


def memory_failure(limit_mb: int, detail: str = "") -> ClientError:
    text = f"the compile needed more than the device's memory limit of {limit_mb} MiB"
    return ClientError("ModelSizeTooBig", text + (f" ({detail})" if detail else ""))


def timeout_failure(max_runtime: int, stage: str) -> ClientError:
    return ClientError(
        "TimeOut", f"the job did not finish within MaxRuntimeInSeconds={max_runtime} (it was in stage {stage})"
    )


class PipeReporter:
    """The pipeline's Reporter: forwards progress to the parent."""

    def __init__(self, stream, log_path: Path | None = None):
        self._stream = stream
        self.current_stage = "fetch"
        self.log_path = log_path  # this child's own stdout/stderr file, uploaded with the artifact

    def send(self, **message) -> None:
        """One line to the agent. When the agent is gone (the pipe is broken) a progress report
        stops the job, as StopCompilationJob would: nobody is left to hear its result."""
        try:
            self._stream.write(json.dumps(message) + "\n")
            self._stream.flush()
        except BrokenPipeError:
            if message.get("event") not in ("result", "failure", "stopped"):
                raise Stopped() from None

    def stage(self, stage: str, percent: float, message: str = "") -> None:
        self.current_stage = stage
        self.send(event="stage", stage=stage, percent=round(float(percent), 1), message=message)

    def derived(self, data_input_config: str) -> None:
        self.send(event="derived", data_input_config=data_input_config)


def _raise_stopped(signum, frame):
    raise Stopped()


def _raise_deadline(signum, frame):
    raise DeadlineExceeded()


def die_with_parent(signum: int) -> bool:
    """Have the kernel send this process `signum` when its parent dies (PR_SET_PDEATHSIG);
    False where it cannot (not Linux)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _end_with_the_agent(agent_pid: int) -> None:
    """SIGTERM this child when the agent that started it dies (Linux's PR_SET_PDEATHSIG).

    The child runs in its own session, so a SIGKILLed agent (the OOM killer, a power supervisor)
    would otherwise leave it compiling, tuning and even uploading for a job that the restarted
    agent has already failed with AgentRestart. With this it unwinds as on StopCompilationJob,
    at once. The restarted agent still kills a child it finds (agent.runner.runner.recover).
    """
    if not die_with_parent(signal.SIGTERM):  # not Linux: recover() is the only guard
        return
    if os.getppid() != agent_pid:  # the agent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _end_group() -> None:
    """SIGTERM the rest of this child's process group. The agent's Stop signals the whole group
    itself; a SIGTERM for the agent's death (_end_with_the_agent) reaches this process alone."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(os.getpgid(0), signal.SIGTERM)
    except OSError:
        pass


def main(argv: list[str]) -> int:
    agent_pid = os.getppid()
    spec = json.loads(Path(argv[1]).read_text())
    stream = os.fdopen(int(argv[2]), "w", buffering=1)
    reporter = PipeReporter(stream, Path(spec["log"]) if spec.get("log") else None)

    from agent.config import AgentConfig, S3Config
    from agent.jobs.job import Job

    # The S3 secrets come in the environment, not in SPEC.json (a file on disk); once read they
    # leave it, so the engine workers and anything else this child starts never see them.
    config = AgentConfig.from_child(spec["config"], os.environ)
    for field in S3Config.SECRETS:
        os.environ.pop(S3Config.secret_variable(field), None)
    job = Job.from_dict(spec["job"])
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)

    from agent import logs

    logs.setup("INFO", job=job.name)
    log = logging.getLogger("agent.child")

    limit = config.memory_limit_mb * 2**20 * DATA_LIMIT_FACTOR
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    signal.signal(signal.SIGTERM, _raise_stopped)
    signal.signal(signal.SIGALRM, _raise_deadline)
    _end_with_the_agent(agent_pid)
    remaining = spec["deadline"] - time.time()
    if remaining <= 0:
        reporter.send(event="failure", reason=timeout_failure(job.max_runtime, "fetch").reason)
        return 0
    signal.setitimer(signal.ITIMER_REAL, remaining)

    try:
        import importlib

        pipeline = importlib.import_module(config.pipeline_module)
        # The real pipeline reads the model in a process with no network (agent.runner.offline);
        # the scripted stand-ins of the tests read nothing.
        offline = {"offline": True} if config.pipeline_module == "agent.pipeline" else {}
        result = pipeline.run(job, config, workdir, reporter, **offline)
        signal.setitimer(signal.ITIMER_REAL, 0)
        reporter.send(
            event="result",
            artifact_uri=result.artifact_uri,
            artifact_digest=result.artifact_digest,
            metrics=result.metrics,
        )
    except Stopped:
        log.info("stopped by SIGTERM in stage %s", reporter.current_stage)
        _end_group()  # the workers this child started (engines, tuning), whoever sent the SIGTERM
        reporter.send(event="stopped")
    except DeadlineExceeded:
        log.info("deadline passed in stage %s", reporter.current_stage)
        reporter.send(event="failure", reason=timeout_failure(job.max_runtime, reporter.current_stage).reason)
    except MemoryError:
        log.error("MemoryError in stage %s", reporter.current_stage)
        reporter.send(event="failure", reason=memory_failure(config.memory_limit_mb, "allocation refused").reason)
    except JobFailure as failure:
        log.error("failed in stage %s: %s", reporter.current_stage, failure.reason)
        reporter.send(event="failure", reason=failure.reason)
    except Exception as exc:  # a bug or an untranslated library error: say so, keep the trace in the log
        log.error("unexpected error in stage %s:\n%s", reporter.current_stage, traceback.format_exc())
        text = f"unexpected {type(exc).__name__} in stage {reporter.current_stage}: {exc}"
        reporter.send(event="failure", reason=ServerError("", text).reason)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
