"""The stages that read the model, in a process with no network.

    python -m agent.runner.offline SPEC.json FD      (started by `run`, in the compile child)

A model is untrusted input, read by native parsers (protobuf, onnx, TVM, LLVM, onnxruntime,
torch, LiteRT). The compile child needs the network and the S3 credentials to fetch the model
and upload the artifact; prepare, compile, verify and benchmark need neither. So the child
runs them (agent.pipeline.stages) in this process, which first enters a user and a network
namespace of its own (unshare(CLONE_NEWUSER | CLONE_NEWNET), as `unshare -rn` does; an
unprivileged user may do it where the kernel and the service manager allow user namespaces).
There it has a loopback device that is down and no route anywhere: code that a parser bug lets
a model run can read this device's files as the agent's user can, but send nothing anywhere.
It is a fresh interpreter, not a fork: nothing of the child's memory (its S3 client, the
credentials it read) comes with it, and its environment has no AWS_*, NEO_AGENT_* or SVCUID
(agent.bench.engines.credential_free_environment, as the engine workers').

Then it confines its own file access with Landlock (agent.runner.landlock; Linux 5.13 and
later): it may read the system's software (/usr, /lib*, /bin, /sbin, /etc, /opt, /proc, /sys)
and the Python environment the agent runs from, and read and write only this job's work
folder and log, the tuning database and /dev. The agent's state directory (its job store, every other job's
model and artifact), its configuration directory (/etc/neo-agent: agent.toml, agent.env, the
keys kept there) and the files the compile child names (the file NEO_AGENT_CONFIG names,
AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, the s3.iot_* certificate and key) stay out even
where they lie inside those trees; home directories (~/.aws) and /tmp are out altogether, and
temporary files go to the job's work/tmp. Landlock also keeps it from TCP (ABI 4) and from
signalling processes outside it (ABI 6). The user namespace already keeps the agent's and the
compile child's /proc/PID/environ and memory (where the S3 secrets are) closed to it.

Where the namespaces or Landlock cannot be had (user namespaces disabled, a unit with
RestrictNamespaces=yes, a kernel without Landlock), the stages run all the same, and
metrics.json says so: "sandbox": {"network": "not isolated: <why>", "files": "not confined:
<why>"}. A job is never failed for it; an operator who needs the isolation checks those fields.

Messages go up the pipe FD as the child's do (agent.runner.child); the child passes the stage
reports on to the agent and keeps the last one, so a deadline or a Stop names the right
stage. The outcome is the last line: {"event": "offline-result", "metrics": ..., "library":
...}, {"event": "offline-failure", "kind", "keyword", "detail", "metrics"} or {"event":
"stopped"}. Deadline and Stop are the child's: it kills this process when either comes (its
SIGALRM or SIGTERM), and this process dies with the child (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ClientError, JobFailure, ServerError

if TYPE_CHECKING:  # pragma: no cover
    from agent.config import AgentConfig
    from agent.jobs.job import Job

CLONE_NEWUSER = 0x10000000  # <linux/sched.h>
CLONE_NEWNET = 0x40000000
SPEC_NAME = "offline.json"
STAGES = ("prepare", "compile", "verify", "benchmark")  # what runs here (agent.pipeline.stages)
SYSTEM_TREES = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin", "/etc", "/opt", "/proc", "/sys")
TUNING_DIR = "tuning"  # agent.compile.tuning.DATABASE_DIR, not imported: that would import TVM before confinement
HIDDEN_VARIABLES = ("NEO_AGENT_CONFIG", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


def isolate_network() -> str:
    """Enter new user and network namespaces; "isolated", or "not isolated: <why>". Must run
    while the process has one thread (the kernel refuses CLONE_NEWUSER to a threaded one)."""
    import ctypes

    uid, gid = os.getuid(), os.getgid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            return f"not isolated: unshare(CLONE_NEWUSER | CLONE_NEWNET) failed: {os.strerror(errno)}"
    except (OSError, AttributeError) as exc:  # not Linux
        return f"not isolated: {exc}"
    # Inside, the agent's user and group map to themselves, so files keep their owners.
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        try:
            Path(f"/proc/self/{name}").write_text(text)
        except OSError as exc:  # the network is cut already; only ownership display suffers
            logging.getLogger(__name__).warning("could not write /proc/self/%s: %s", name, exc)
    return "isolated"


def confine_files(spec: dict[str, Any]) -> str:
    """Landlock this process to what the stages need (see the module docstring); "confined
    (Landlock ABI N)", or "not confined: <why>". Must run while the process has one thread."""
    from agent.configfile import DEFAULT_CONFIG_PATH
    from agent.runner import landlock

    workdir, state_dir = Path(spec["workdir"]), Path(spec["config"]["state_dir"])
    scratch = workdir / "tmp"
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(scratch)  # tempfile's, and the compilers' and engine workers' it starts
    write = [workdir, Path("/dev"), *([Path(spec["log"])] if spec["log"] else [])]
    if spec["config"]["tuning"]["database"]:
        write.append(state_dir / TUNING_DIR)
        write[-1].mkdir(mode=0o700, parents=True, exist_ok=True)  # made later, it would be outside the rules
    hide = [state_dir, DEFAULT_CONFIG_PATH.parent, *map(Path, spec.get("hide", []))]
    try:
        version = landlock.restrict([*map(Path, SYSTEM_TREES), *python_trees()], write, hide)
    except (landlock.Unavailable, OSError) as exc:
        return f"not confined: {exc}"
    return f"confined (Landlock ABI {version})"


def python_trees() -> list[Path]:
    """Where this interpreter and the agent's code are read from: the prefixes, the standard
    library and site-packages, the agent's source root and PYTHONPATH's entries; not the
    working directory that `python -m` puts first on sys.path (the service's is /)."""
    import sysconfig

    import agent

    trees = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             *(sysconfig.get_paths().get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")),
             str(Path(agent.__file__).resolve().parent.parent),
             *os.environ.get("PYTHONPATH", "").split(os.pathsep),
             *sys.path[1:]}
    return [Path(tree) for tree in sorted(t for t in trees if t and t != "/")]


def _hidden_files(config: "AgentConfig") -> list[str]:
    """The secret files the compile child knows of, for confine_files to keep out."""
    named = [os.environ.get(name, "") for name in HIDDEN_VARIABLES]
    return [path for path in (*named, config.s3.iot_key, config.s3.iot_cert) if path]


def run(job: "Job", config: "AgentConfig", workdir: Path, model_path: Path, progress: Any,
        deadline: float) -> tuple[dict, str]:
    """agent.pipeline.stages in an offline process; its (metrics, library), or its failure
    raised here. Called by the compile child (agent.pipeline.run with offline=True)."""
    from agent.runner.child import Stopped

    spec_path = workdir / SPEC_NAME
    settings = config.to_child()
    settings.pop("s3")  # the stages touch no storage; the fleet's records are the child's to move
    spec = {"job": job.to_dict(), "config": settings, "workdir": str(workdir), "model": str(model_path),
            "deadline": deadline, "stage": progress.stage,
            "percent": progress.percent, "log": str(progress.report.log_path or ""), "hide": _hidden_files(config)}
    spec_path.write_text(json.dumps(spec))
    os.chmod(spec_path, 0o600)
    from agent.bench.engines import credential_free_environment

    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "agent.runner.offline", str(spec_path), str(write_fd)],
                                pass_fds=(write_fd,), env=credential_free_environment(),
                                stdin=subprocess.DEVNULL)
    finally:
        os.close(write_fd)
    outcome: dict[str, Any] | None = None
    try:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                event = message.get("event")
                if event == "stage":
                    progress.follow(message["stage"], message["percent"], message.get("message", ""))
                elif event == "derived":
                    progress.report.derived(message["data_input_config"])
                elif event in ("offline-result", "offline-failure", "stopped"):
                    outcome = message
        code = proc.wait()
    except BaseException:  # a Stop, the deadline: the stages end with the child's verdict
        proc.kill()
        proc.wait()
        raise
    if outcome is None:  # a crash in native code, or a bug before the first report: the job's log has it
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        where = f"in stage {progress.stage}" if progress.stage in STAGES else "before its first stage"
        raise ServerError("", f"the process that reads the model (prepare to benchmark) ended with {how} {where}, "
                              "with no result; the job's log has its last words")
    if outcome["event"] == "stopped":
        raise Stopped()
    if outcome["event"] == "offline-failure":
        failure = (ClientError if outcome["kind"] == "ClientError" else ServerError)(outcome["keyword"], outcome["detail"])
        if outcome.get("metrics") is not None:
            failure.metrics = outcome["metrics"]
        raise failure
    return outcome["metrics"], outcome["library"]


def main(argv: list[str]) -> int:
    isolation = isolate_network()  # first, while this process has one thread
    spec = json.loads(Path(argv[1]).read_text())
    confinement = confine_files(spec)  # as well
    # Tuning measures candidates, and profiles the model, with the threads the artifact is benchmarked
    # with. Unset, TVM takes half the x86 CPUs ("ignore hyper-threading"): 1 on a 2-vCPU VM, so the
    # search tuned one-thread schedules that the 2-thread benchmark then ran (BERT-base 1.6x slower).
    os.environ["TVM_NUM_THREADS"] = str(spec["config"]["bench"]["threads"])  # before TVM's pool starts
    from agent.runner.child import PipeReporter, Stopped, _raise_stopped, die_with_parent, memory_failure

    reporter = PipeReporter(os.fdopen(int(argv[2]), "w", buffering=1), Path(spec["log"]) if spec["log"] else None)
    die_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGTERM, _raise_stopped)

    from agent import logs, pipeline
    from agent.config import AgentConfig
    from agent.jobs.job import Job

    config = AgentConfig.from_child(spec["config"], {})
    job = Job.from_dict(spec["job"])
    logs.setup("INFO", job=job.name)
    log = logging.getLogger("agent.offline")
    log.info("stages prepare to benchmark in process %d: network %s, files %s", os.getpid(), isolation, confinement)
    progress = pipeline._Progress(reporter)
    progress.stage, progress.percent = spec["stage"], float(spec["percent"])
    try:
        metrics, library = pipeline.stages(job, config, Path(spec["workdir"]), Path(spec["model"]), progress,
                                           float(spec["deadline"]))
        metrics["sandbox"] = {"network": isolation, "files": confinement}
        reporter.send(event="offline-result", metrics=metrics, library=library)
    except Stopped:
        reporter.send(event="stopped")
    except (MemoryError, JobFailure) as exc:
        failure = memory_failure(config.memory_limit_mb, "allocation refused") if isinstance(exc, MemoryError) else exc
        reporter.send(event="offline-failure", kind=failure.kind, keyword=failure.keyword, detail=failure.detail,
                      metrics=getattr(failure, "metrics", None))
    except Exception as exc:  # a bug or an untranslated library error, as agent.runner.child words it
        log.error("unexpected error in stage %s:\n%s", reporter.current_stage, traceback.format_exc())
        reporter.send(event="offline-failure", kind="ServerError", keyword="",
                      detail=f"unexpected {type(exc).__name__} in stage {reporter.current_stage}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
