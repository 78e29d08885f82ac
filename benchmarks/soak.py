"""Soak: the agent under a steady stream of jobs for hours; its memory and descriptors over time.

    .venv/bin/python benchmarks/soak.py --hours 4 [--interval 2] [--real] [--out benchmarks/results]

A daemon (`neo-agent run`) serves HTTP; a job is submitted every `--interval` seconds, each
from a fresh client as a fleet's callers would, and every job is waited for to end, described
and then deleted half the time (so the store both grows and shrinks). By default jobs run the
runner tests' scripted pipeline (they report a stage and end) so that hours of the agent's
own work fit in hours; `--real` compiles the sample model instead (one job at a time, about
20 s each). Every minute the daemon's RSS, open file descriptors and thread count are
sampled; the report gives them at the start, the end and their growth per hour (a least-
squares line over the second half, after start-up has settled), and the jobs that did not
end COMPLETED. Not part of CI: it exists to run for hours.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.load import ENDED, http_client, proc_status  # noqa: E402

SAMPLE_EVERY_S = 60.0


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) in value per hour."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return 0.0 if var == 0 else sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 3600


def settle(client, pending: list[str], outcomes: dict[str, int], *, delete_even: bool) -> None:
    """Count the pending jobs that ended (and delete every other one when `delete_even`)."""
    for job in list(pending):
        status = client.describe_compilation_job(CompilationJobName=job)["CompilationJobStatus"]
        if status in ENDED:
            outcomes[status] = outcomes.get(status, 0) + 1
            pending.remove(job)
            if delete_even and int(job.rsplit("-", 1)[1]) % 2 == 0:
                client.delete_compilation_job(CompilationJobName=job)


def soak(tmp: Path, hours: float, interval: float, real: bool) -> dict:
    from agent.samples import make_sample_archive
    from tests.service.daemon_process import DaemonProcess, job_request, scripted_request

    daemon = DaemonProcess(tmp / "state", scripted=not real,
                           env={"NEO_AGENT_MAX_RETAINED_MB": "200", "NEO_AGENT_QUEUE_LIMIT": "1000"}).start()
    archive = make_sample_archive(tmp / "in").as_uri() if real else ""
    samples, pending, outcomes, submitted = [], [], {}, 0
    started = time.monotonic()
    next_sample = started
    try:
        while time.monotonic() - started < hours * 3600:
            name = f"soak-{submitted:06d}"
            body = (job_request(name, archive, (tmp / "out").as_uri(), StoppingCondition={"MaxRuntimeInSeconds": 900})
                    if real else scripted_request(name, "stage=compile"))
            http_client(daemon).create_compilation_job(**body)   # a fresh client each time
            pending.append(name)
            submitted += 1
            settle(http_client(daemon), pending, outcomes, delete_even=True)
            if time.monotonic() >= next_sample:
                status = proc_status(daemon.proc.pid)
                threads = sum(1 for _ in Path(f"/proc/{daemon.proc.pid}/task").iterdir())
                samples.append({"t_s": round(time.monotonic() - started, 1), "rss_mb": round(status["rss_mb"], 1),
                                "fds": status["fds"], "threads": threads, "jobs_submitted": submitted})
                print(json.dumps(samples[-1]), flush=True)
                next_sample += SAMPLE_EVERY_S
            time.sleep(interval)
        drain_until = time.monotonic() + 120   # the last jobs end before the daemon stops
        while pending and time.monotonic() < drain_until:
            settle(http_client(daemon), pending, outcomes, delete_even=False)
            time.sleep(0.5)
    finally:
        daemon.stop()
    settled = samples[len(samples) // 2:]
    return {"hours": hours, "interval_s": interval, "real_compiles": real, "jobs_submitted": submitted,
            "outcomes": outcomes, "not_ended": len(pending), "samples": samples,
            "growth_per_hour": {key: round(slope_per_hour([(s["t_s"], s[key]) for s in settled]), 2)
                                for key in ("rss_mb", "fds", "threads")}}


def main() -> None:
    from benchmarks.published_models import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between submissions")
    parser.add_argument("--real", action="store_true", help="compile the sample model instead of scripted jobs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = soak(Path(tmp), args.hours, args.interval, args.real)
    result.update(command="python " + " ".join(sys.argv), machine=machine(),
                  date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    first, last = result["samples"][0], result["samples"][-1]
    summary = (f"# Soak\n\nCommand: `{result['command']}`  \nDate: {result['date']}  \nMachine: {result['machine']['cpu']}, "
               f"{result['machine']['cores_available']} cores\n\n{result['jobs_submitted']} jobs over {args.hours:g} h "
               f"({'real compiles' if args.real else 'scripted jobs'}): {result['outcomes']}, {result['not_ended']} not ended.\n\n"
               f"| | start | end | growth per hour (second half) |\n|---|---|---|---|\n"
               + "".join(f"| {k} | {first[k]} | {last[k]} | {result['growth_per_hour'][k]} |\n" for k in ("rss_mb", "fds", "threads")))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "soak.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
