"""neo-agent: a thin shell over the agent's Python API.

    neo-agent compile REQUEST.json   run one CreateCompilationJob request in the foreground
    neo-agent demo                   the whole flow on embedded defaults: S3 server, model, request
    neo-agent run                    serve the API (SageMaker's HTTP protocol) until SIGTERM/SIGINT
    neo-agent detect                 which device profile this device is, why, and its TVM target
    neo-agent check-config           the effective configuration and where each value came from
    neo-agent health                 does the running agent answer, with room to work (monitoring)
    neo-agent submit|describe|list|stop|delete|fleet-job   a device's agent over MQTT (agent/client/cli.py)

`--config PATH` (before the command, or after run, compile, check-config, health) names the
configuration file instead of $NEO_AGENT_CONFIG or /etc/neo-agent/agent.toml (agent.configfile).

Exit codes: 0 the job COMPLETED; 1 it ended FAILED or STOPPED; 2 the request was refused
(ValidationException and friends) or the configuration is wrong. `detect` exits 0 when a
profile matches this device and 1 when none does. `check-config` and `health` answer a yes/no
question for scripts and monitoring, so they exit 0 or 1 only: 1 for a wrong configuration too.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path

from agent import logs
from agent.config import AgentConfig
from agent.configfile import load_config, load_with_origins, render
from agent.errors import ApiError, ConfigError
from agent.service import health

log = logging.getLogger("agent.cli")

EXIT_OK, EXIT_JOB_FAILED, EXIT_REFUSED = 0, 1, 2
EXIT_HEALTHY, EXIT_UNHEALTHY = 0, 1  # check-config and health


def run_foreground(config: AgentConfig, request: dict, out=sys.stdout) -> int:
    """Start an agent, submit `request`, stream progress, print the results table."""
    from agent.jobs.job import TERMINAL
    from agent.report import ProgressPrinter, results_table
    from agent.service.agent import Agent

    name = request.get("CompilationJobName", "")
    done = threading.Event()
    printer = ProgressPrinter(out)

    def on_event(event) -> None:
        if event.job_name != name:
            return
        printer(event)
        if event.status in {s.value for s in TERMINAL}:
            done.set()

    with Agent(config) as agent:
        agent.events.subscribe(on_event)
        arn = agent.api.call("CreateCompilationJob", request)["CompilationJobArn"]
        print(f"CompilationJobArn {arn}", file=out, flush=True)
        try:
            while not done.wait(0.5):
                pass
        except KeyboardInterrupt:
            print("interrupted: StopCompilationJob", file=out, flush=True)
            agent.api.call("StopCompilationJob", {"CompilationJobName": name})
            done.wait(config.stop_grace_s + 10)
        describe = agent.api.call("DescribeCompilationJob", {"CompilationJobName": name})
        metrics = agent.store.get(name).metrics
    print(file=out)
    print(results_table(describe, metrics), file=out, flush=True)
    return EXIT_OK if describe["CompilationJobStatus"] == "COMPLETED" else EXIT_JOB_FAILED


def cmd_compile(args) -> int:
    path = Path(args.request)
    try:
        request = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"neo-agent: cannot read request {path}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    config = load_config(args.config, overrides={"state_dir": args.state_dir})
    return run_foreground(config, request)


def cmd_demo(args) -> int:
    from agent.demo.run import demo

    return demo(state_dir=args.state_dir, keep=args.keep)


def cmd_run(args) -> int:
    from agent.service.daemon import Daemon

    loaded = load_with_origins(args.config, overrides=_overrides(args))
    for note in loaded.notes:  # a misspelt variable in agent.env, say
        log.warning("configuration: %s", note)
    config = loaded.config
    # The daemon's life-cycle lines (ready, shutting down, stopped) are what an operator and
    # systemd's journal need, so they show at INFO whatever --log-level hides.
    daemon_log = logging.getLogger("agent.service.daemon")
    if daemon_log.getEffectiveLevel() > logging.INFO:
        daemon_log.setLevel(logging.INFO)
    return Daemon(config).run()


def cmd_detect(args) -> int:
    from agent.device import detect
    from agent.device.describe import describe, format_description

    detection = detect(args.root, machine=args.machine)
    report = describe(detection)
    print(json.dumps(report, indent=2) if args.json else format_description(report))
    return EXIT_OK if detection.profile is not None else EXIT_JOB_FAILED


def cmd_check_config(args) -> int:
    try:
        loaded = load_with_origins(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"neo-agent check-config: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    print(render(loaded))
    return EXIT_HEALTHY


def cmd_health(args) -> int:
    try:
        healthy, line = health.check(load_config(args.config, overrides=_overrides(args)), timeout=args.timeout)
    except ConfigError as exc:
        healthy, line = False, f"FAILED: configuration: {exc}"
    except Exception as exc:  # for monitoring: one line, never a traceback
        healthy, line = False, f"FAILED: {type(exc).__name__}: {exc}"
    print(f"neo-agent health: {line}", flush=True)
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY


def _overrides(args) -> dict:
    """The command line's layer: the options `run` shares with check-config and health."""
    return {"state_dir": args.state_dir, "http": args.http}


def _add_config(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # After the subcommand it may only set, never reset, what was given before it: SUPPRESS.
    parser.add_argument("--config", metavar="PATH", default=None if top else argparse.SUPPRESS,
                        help="the configuration file (default: $NEO_AGENT_CONFIG, else /etc/neo-agent/agent.toml "
                             "when it exists; an empty PATH reads none)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http", metavar="HOST:PORT",
                        help="where the SageMaker-protocol endpoint listens (default: http.endpoint, "
                             "$NEO_AGENT_HTTP or 127.0.0.1:8573)")
    parser.add_argument("--state-dir", type=Path, help="where jobs are recorded; created if absent "
                        "(default: agent.state_dir, $NEO_AGENT_STATE_DIR or $XDG_STATE_HOME/neo-agent)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neo-agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", default="WARNING", help="agent log level on stderr (default WARNING)")
    parser.add_argument("--log-format", choices=("kv", "json"), default="kv")
    _add_config(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="run one CreateCompilationJob request (JSON file) in the foreground")
    p.add_argument("request", help="a file holding SageMaker's CreateCompilationJob JSON body")
    p.add_argument("--state-dir", type=Path, help="where jobs are recorded (default: $XDG_STATE_HOME/neo-agent)")
    _add_config(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("demo", help="compile a sample model end to end on embedded defaults")
    p.add_argument("--state-dir", type=Path, help="default: a fresh directory under ./.state/")
    p.add_argument("--keep", action="store_true", help="leave the S3 server running until Enter is pressed")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="serve the compilation API until SIGTERM/SIGINT (exit 0 after a clean shutdown)")
    _add_run_options(p)
    _add_config(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="load and check the configuration; print it with each value's source "
                                            "(exit 0), or the error naming the key (exit 1)")
    _add_run_options(p)
    _add_config(p)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("health", help="exit 0 if the running agent answers on its HTTP endpoint and its state "
                                      "directory is writable with min_free_mb free, else 1; one line either way")
    p.add_argument("--timeout", type=float, default=health.DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"how long to wait for the answer (default {health.DEFAULT_TIMEOUT_S:g})")
    _add_run_options(p)
    _add_config(p)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("detect", help="which device profile this device is, the evidence, and its TVM target "
                                      "(exit 0 if one matches, 1 if none)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--root", type=Path, default=Path("/"),
                   help="read /proc, the device tree and /etc under DIR instead (a captured tree)")
    p.add_argument("--machine", help="the userland architecture (uname -m) to assume; "
                                     "default: this Python's, or from --root's loader and cpuinfo")
    p.set_defaults(func=cmd_detect)

    from agent.client.cli import add_commands  # submit, describe, list, stop, delete, fleet-job (over MQTT)

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level.upper(), args.log_format)
    try:
        return args.func(args)
    except ApiError as exc:
        print(f"neo-agent: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except ConfigError as exc:
        print(f"neo-agent: configuration: {exc}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
