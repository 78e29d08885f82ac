"""neo-agent's remote commands: a device's agent, driven over MQTT.

    neo-agent submit REQUEST.json --thing NAME [--wait]   CreateCompilationJob; prints the ARN
    neo-agent describe NAME --thing NAME                   the JSON answer
    neo-agent list --thing NAME [--status S]               the JSON answer
    neo-agent stop NAME --thing NAME                       the JSON answer ({})
    neo-agent delete NAME --thing NAME                     the JSON answer ({})
    neo-agent fleet-job REQUEST.json --thing-group ARN     an IoT Jobs document and its `aws iot create-job`

Every MQTT command takes --broker HOST:PORT and --mqtt-version 5|3.1.1 (defaults: the
configuration's mqtt section, NEO_AGENT_MQTT_*). With --wait, submit subscribes to the job's
events first, prints progress as it arrives and, at the end, the results table.

Exit codes: 0 done (with --wait: the job COMPLETED); 1 the job ended FAILED or STOPPED;
2 the agent refused the request (its error code is printed) or the input is wrong;
3 no answer: the broker or the device's agent could not be reached.
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
from pathlib import Path
from typing import Any

from agent.configfile import load_config
from agent.errors import ApiError
from agent.transports import jobdoc, topics

EXIT_OK, EXIT_JOB_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2, 3
CONNECT_TIMEOUT_S = 10.0
SILENCE_CHECK_S = 30.0  # with --wait, ask for the job's status after this long without an event


def add_commands(subparsers) -> None:
    """Register the remote commands on neo-agent's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--thing", required=True, help="the device's thing name (its agent's mqtt.thing_name)")
    common.add_argument("--broker", metavar="HOST:PORT", help="the MQTT broker (default: $NEO_AGENT_MQTT_HOST:PORT)")
    common.add_argument("--mqtt-version", choices=("5", "3.1.1"), help="default: $NEO_AGENT_MQTT_PROTOCOL or 5")
    common.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for each answer, and (at most 10) for the broker (default 30)")

    p = subparsers.add_parser("submit", parents=[common], help="send a CreateCompilationJob request to a device")
    p.add_argument("request", help="a file holding SageMaker's CreateCompilationJob JSON body")
    p.add_argument("--wait", action="store_true", help="follow the job's progress; exit 0 only if it COMPLETED")
    p.set_defaults(func=_bounded(cmd_submit))

    for name, operation, help_text in (
        ("describe", "DescribeCompilationJob", "a device's DescribeCompilationJob"),
        ("stop", "StopCompilationJob", "stop a job on a device"),
        ("delete", "DeleteCompilationJob", "delete a finished job's record on a device"),
    ):
        p = subparsers.add_parser(name, parents=[common], help=help_text)
        p.add_argument("name", help="the CompilationJobName")
        p.set_defaults(func=_bounded(cmd_named), operation=operation)

    p = subparsers.add_parser("list", parents=[common], help="a device's ListCompilationJobs")
    p.add_argument("--status", choices=("INPROGRESS", "COMPLETED", "FAILED", "STARTING", "STOPPING", "STOPPED"))
    p.add_argument("--name-contains")
    p.add_argument("--max-results", type=int)
    p.set_defaults(func=_bounded(cmd_list))

    p = subparsers.add_parser("fleet-job", help="write an AWS IoT Jobs document and print its `aws iot create-job`")
    p.add_argument("request", help="a file holding SageMaker's CreateCompilationJob JSON body")
    p.add_argument("--thing-group", required=True, metavar="ARN", help="the targets: a thing group (or thing) ARN")
    p.add_argument("--document-out", type=Path, help="where to write the document (default: JOB_ID.job.json)")
    p.add_argument("--job-id", help="the IoT job id (default: the request's CompilationJobName)")
    p.set_defaults(func=_bounded(cmd_fleet_job))


# --- commands -----------------------------------------------------------------------------
def cmd_submit(args) -> int:
    request = _read_request(args.request)
    if request is None:
        return EXIT_REFUSED
    with _remote(args, persistent=args.wait) as remote:
        if not args.wait:
            answer = remote.call("CreateCompilationJob", request, timeout=args.timeout)
            print(f"CompilationJobArn {answer['CompilationJobArn']}", flush=True)
            return EXIT_OK
        return _submit_and_wait(remote, request, args.timeout)


def cmd_named(args) -> int:
    with _remote(args) as remote:
        return _print(remote.call(args.operation, {"CompilationJobName": args.name}, timeout=args.timeout))


def cmd_list(args) -> int:
    body = {"StatusEquals": args.status, "NameContains": args.name_contains, "MaxResults": args.max_results}
    with _remote(args) as remote:
        return _print(remote.call("ListCompilationJobs", {k: v for k, v in body.items() if v is not None},
                                  timeout=args.timeout))


def cmd_fleet_job(args) -> int:
    request = _read_request(args.request)
    if request is None:
        return EXIT_REFUSED
    job_id = args.job_id or jobdoc.default_job_id(request)
    document = jobdoc.build_document(request)
    path = (args.document_out or Path(f"{job_id}.job.json")).resolve()
    command = jobdoc.create_job_command(job_id, args.thing_group, str(path), jobdoc.in_progress_timeout_minutes(request))
    path.write_bytes(jobdoc.document_bytes(document))
    print(f"wrote {path}", flush=True)
    print(jobdoc.command_line(command), flush=True)
    return EXIT_OK


# --- submit --wait ------------------------------------------------------------------------
def _submit_and_wait(remote, request: dict[str, Any], timeout: float) -> int:
    from agent.report import ProgressPrinter, results_table

    name = str(request.get("CompilationJobName", ""))
    events: queue.Queue = queue.Queue()
    remote.watch(name, events.put)  # before the request: the first events must not be missed
    answer = remote.call("CreateCompilationJob", request, timeout=timeout)
    print(f"CompilationJobArn {answer['CompilationJobArn']}", flush=True)
    printer = ProgressPrinter(sys.stdout)
    final: dict[str, Any] | None = None
    while final is None:
        try:
            body = events.get(timeout=SILENCE_CHECK_S)
        except queue.Empty:
            # Nothing for a while: ask, in case the final event can't reach us.
            status = remote.call("DescribeCompilationJob", {"CompilationJobName": name}, timeout=timeout)
            if status["CompilationJobStatus"] in topics.TERMINAL_STATUSES:
                final = {"kind": "status", "status": status["CompilationJobStatus"]}
            continue
        printer(topics.event_from_payload(body))
        if topics.is_final(body):
            final = body
    if final.get("kind") == "deleted":
        print(f"neo-agent: {name} was deleted on the device before it finished", file=sys.stderr)
        return EXIT_JOB_FAILED
    describe = remote.call("DescribeCompilationJob", {"CompilationJobName": name}, timeout=timeout)
    print(flush=True)
    print(results_table(describe, (final.get("summary") or {}).get("metrics")), flush=True)
    return EXIT_OK if describe["CompilationJobStatus"] == "COMPLETED" else EXIT_JOB_FAILED


# --- helpers ------------------------------------------------------------------------------
class _remote:
    """A connected RemoteAgent for one command; MQTT and API failures become exit codes."""

    def __init__(self, args, persistent: bool = False):
        from agent.client.remote import RemoteAgent, settings_for

        config = load_config(getattr(args, "config", None))  # the global --config, when given
        settings = settings_for(config.mqtt, broker=args.broker, protocol=args.mqtt_version)
        self.remote = RemoteAgent(settings, args.thing, persistent=persistent)
        self.connect_timeout = min(args.timeout, CONNECT_TIMEOUT_S)

    def __enter__(self):
        return self.remote.connect(timeout=self.connect_timeout)

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.remote.close()
        return False


def _print(answer: dict[str, Any]) -> int:
    print(json.dumps(answer, indent=2, default=str), flush=True)
    return EXIT_OK


def _read_request(path: str) -> dict[str, Any] | None:
    try:
        request = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        print(f"neo-agent: cannot read request {path}: {exc}", file=sys.stderr)
        return None
    if not isinstance(request, dict):
        print(f"neo-agent: {path} must hold a JSON object (CreateCompilationJob's body)", file=sys.stderr)
        return None
    return request


def _bounded(func):
    """The boundary for these commands: MQTT trouble is exit 3, a refusal exit 2."""

    def command(args) -> int:
        return _run(func, args)

    return command


def _run(func, args) -> int:
    from agent.transports.mqtt import MqttError

    try:
        return func(args)
    except MqttError as exc:
        print(f"neo-agent: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ApiError as exc:
        print(f"neo-agent: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("interrupted; the job goes on on the device (neo-agent stop NAME --thing THING stops it)",
              file=sys.stderr)
        return 130
