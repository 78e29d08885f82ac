"""What the agent itself costs: idle memory, request-to-compile-start, API answer times under a queue.

    .venv/bin/python benchmarks/agent_overhead.py [--queued 100] [--calls 1000]

Starts `neo-agent run` as its own process (HTTP on a free loopback port, a fresh state
directory), and drives it with boto3's sagemaker client as a user would:
  1. the daemon's resident memory once ready (the compile child is a separate process);
  2. request-to-compile-start: CreationTime -> CompilationStartTime of a job on an idle agent;
  3. with that job kept running (its benchmark stage is made long) and N more jobs queued:
     Create, Describe and List (MaxResults=100) answer times, and the daemon's memory.
Writes benchmarks/results/agent_overhead.{md,json} with the command, machine and load.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import botocore.config  # noqa: E402

from agent.samples import make_sample_archive  # noqa: E402
from benchmarks.published_models import machine  # noqa: E402

READY_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)
    pick = lambda p: ordered[min(len(ordered) - 1, int(len(ordered) * p))]  # noqa: E731 - onnxruntime_perf_test's rule
    return {"n": len(ordered), "p50": round(pick(0.5), 3), "p90": round(pick(0.9), 3),
            "p99": round(pick(0.99), 3), "max": round(ordered[-1], 3)}


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def request(name: str, model_uri: str, out_uri: str) -> dict:
    return {"CompilationJobName": name, "RoleArn": "arn:aws:iam::000000000000:role/bench",
            "InputConfig": {"S3Uri": model_uri, "Framework": "ONNX"},
            "OutputConfig": {"S3OutputLocation": out_uri, "TargetDevice": "ml_c5"},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600}}


def run(queued: int, calls: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_uri = make_sample_archive(tmp).as_uri()
        out_uri = (tmp / "out").as_uri()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEO_AGENT_")}
        # The first job stays in its benchmark stage, so the others wait in the queue.
        env.update(NEO_AGENT_QUEUE_LIMIT=str(queued + 10), NEO_AGENT_BENCH_MIN_SECONDS="3000",
                   NEO_AGENT_BENCH_MAX_SECONDS="3000", NEO_AGENT_TUNING_DEFAULT_SECONDS="0")
        log = open(tmp / "daemon.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "--log-level", "INFO", "run", "--http",
                                 f"127.0.0.1:{port}", "--state-dir", str(tmp / "state")],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while b"ready:" not in (tmp / "daemon.log").read_bytes():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the daemon did not start:\n" + (tmp / "daemon.log").read_text())
                time.sleep(0.05)
            time.sleep(2)  # let start-up settle before reading memory
            idle_rss = rss_mb(proc.pid)
            client = boto3.client(
                "sagemaker", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                aws_access_key_id="bench", aws_secret_access_key="bench",
                config=botocore.config.Config(retries={"max_attempts": 1}))
            client.create_compilation_job(**request("first", model_uri, out_uri))
            while "CompilationStartTime" not in (d := client.describe_compilation_job(CompilationJobName="first")):
                time.sleep(0.01)
            start_latency_ms = (d["CompilationStartTime"] - d["CreationTime"]).total_seconds() * 1000
            create_ms = [timed(lambda i=i: client.create_compilation_job(**request(f"queued-{i}", model_uri, out_uri)))
                         for i in range(queued)]
            names = [f"queued-{i}" for i in range(queued)]
            describe_ms = [timed(lambda: client.describe_compilation_job(CompilationJobName=random.choice(names)))
                           for _ in range(calls)]
            list_ms = [timed(lambda: client.list_compilation_jobs(MaxResults=100)) for _ in range(max(10, calls // 10))]
            statuses = {client.describe_compilation_job(CompilationJobName=n)["CompilationJobStatus"] for n in names}
            return {
                "idle_rss_mb": round(idle_rss, 1),
                "rss_with_queue_mb": round(rss_mb(proc.pid), 1),
                "request_to_compile_start_ms": round(start_latency_ms, 1),
                "queued_jobs": queued, "queued_statuses": sorted(statuses),
                "create_ms": percentiles(create_ms),
                "describe_ms": percentiles(describe_ms),
                "list_100_ms": percentiles(list_ms),
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def markdown(result: dict, meta: dict) -> str:
    r = result
    rows = [
        ("agent idle RSS (the daemon; compile children are separate)", f"{r['idle_rss_mb']} MiB"),
        (f"agent RSS with {r['queued_jobs']} jobs queued and one compiling", f"{r['rss_with_queue_mb']} MiB"),
        ("request to compile start (CreationTime -> CompilationStartTime, idle agent)",
         f"{r['request_to_compile_start_ms']} ms"),
    ]
    for label, key in (("CreateCompilationJob", "create_ms"), ("DescribeCompilationJob", "describe_ms"),
                       ("ListCompilationJobs MaxResults=100", "list_100_ms")):
        p = r[key]
        rows.append((f"{label} over HTTP with boto3, {p['n']} calls, queue full of {r['queued_jobs']}",
                     f"p50 {p['p50']} ms, p90 {p['p90']} ms, p99 {p['p99']} ms"))
    lines = ["# Agent overhead", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}  ",
             f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores_available']} cores, "
             f"{meta['machine']['memory_gb']} GB  ",
             f"Load average (1 min) at start / end: {meta['load'][0]:.2f} / {meta['load'][1]:.2f}  ",
             "Answer times are measured by the client (boto3, loopback HTTP), so they include boto3's "
             "own serialization and signing.", "",
             "| what | measured |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queued", type=int, default=100)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    result = run(args.queued, args.calls)
    meta = {"command": "python " + " ".join(sys.argv),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(), "load": [load_start, os.getloadavg()[0]]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "agent_overhead.json").write_text(json.dumps({"meta": meta, "result": result}, indent=1))
    (args.out / "agent_overhead.md").write_text(markdown(result, meta))
    print(markdown(result, meta))


if __name__ == "__main__":
    main()
