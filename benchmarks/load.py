"""Load: CreateCompilationJob requests in a burst, over HTTP and over MQTT, at a real agent process.

    .venv/bin/python benchmarks/load.py [--requests 500] [--queue-limit 100] [--out benchmarks/results]

A daemon (`neo-agent run` with the runner tests' scripted pipeline, whose jobs only report a
stage and end, so that the agent's own work is what is loaded) serves HTTP and MQTT on a real
mosquitto broker. For each transport, `--requests` CreateCompilationJob requests go out at
once from 16 threads; the answers are counted (accepted, or ResourceLimitExceeded once the
queue is full), every accepted job is waited for to COMPLETED and found in
ListCompilationJobs, and no refused one is. Reported: the answer latency percentiles, the
daemon's RSS before, at its peak and after, its open file descriptors. tests/load runs the
same burst with fewer requests and asserts on what was lost (nothing), not on speed.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THREADS = 16
ENDED = {"COMPLETED", "FAILED", "STOPPED"}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda p: ordered[min(len(ordered) - 1, int(len(ordered) * p))]  # noqa: E731
    return {"p50": round(pick(0.5) * 1e3, 2), "p90": round(pick(0.9) * 1e3, 2), "p99": round(pick(0.99) * 1e3, 2),
            "max": round(ordered[-1] * 1e3, 2)}


def proc_status(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "hwm_mb": int(fields["VmHWM"].split()[0]) / 1024,
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


class Sampler(threading.Thread):
    """The daemon's RSS and descriptors every 50 ms while a burst runs."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_rss, self.peak_fds, self._halt = pid, 0.0, 0, threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.05):
            status = proc_status(self.pid)
            self.peak_rss, self.peak_fds = max(self.peak_rss, status["rss_mb"]), max(self.peak_fds, status["fds"])

    def stop(self) -> None:
        self._halt.set()
        self.join()


def burst(create, names: list[str], request_for) -> tuple[list[str], dict[str, str], list[float]]:
    """`create(body)` for every name at once from THREADS threads: (accepted, refused name -> code, latencies)."""
    accepted, refused, latencies, lock = [], {}, [], threading.Lock()

    def one(name: str) -> None:
        started = time.perf_counter()
        code = create(request_for(name))
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)
            (accepted.append(name) if code is None else refused.__setitem__(name, code))

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, names))
    return accepted, refused, latencies


def http_client(daemon):
    """boto3's SageMaker client for the daemon, with a connection for each client thread."""
    from tests.service.daemon_process import sagemaker_client

    return sagemaker_client(daemon.url, connections=THREADS + 4)


def http_create(client):
    import botocore.exceptions

    def create(body: dict) -> str | None:
        try:
            client.create_compilation_job(**body)
            return None
        except botocore.exceptions.ClientError as exc:
            return exc.response["Error"]["Code"]
    return create


def mqtt_create(remote):
    from agent.client.remote import RemoteApiError

    def create(body: dict) -> str | None:
        try:
            remote.call("CreateCompilationJob", body)
            return None
        except RemoteApiError as exc:
            return exc.code
    return create


def wait_all_ended(client, names: list[str], timeout: float) -> dict[str, str]:
    """name -> final status, from DescribeCompilationJob, once every job ended (or the timeout)."""
    deadline, status = time.monotonic() + timeout, {}
    pending = list(names)
    while pending and time.monotonic() < deadline:
        still = []
        for name in pending:
            status[name] = client.describe_compilation_job(CompilationJobName=name)["CompilationJobStatus"]
            if status[name] not in ENDED:
                still.append(name)
        pending = still
        if pending:
            time.sleep(0.5)
    return status


def listed(client, prefix: str) -> set[str]:
    names, token = set(), None
    while True:
        page = client.list_compilation_jobs(MaxResults=100, NameContains=prefix, **({"NextToken": token} if token else {}))
        names |= {s["CompilationJobName"] for s in page["CompilationJobSummaries"]}
        token = page.get("NextToken")
        if not token:
            return names


def run_burst(daemon, transport: str, create, count: int, job_timeout: float) -> dict:
    """One burst through `create`; every accepted job waited for and listed."""
    from tests.service.daemon_process import scripted_request

    client = http_client(daemon)
    prefix = f"load-{transport}-"
    names = [f"{prefix}{i:04d}" for i in range(count)]
    before = proc_status(daemon.proc.pid)
    sampler = Sampler(daemon.proc.pid)
    sampler.start()
    started = time.perf_counter()
    accepted, refused, latencies = burst(create, names, lambda name: scripted_request(name, "stage=compile"))
    burst_s = time.perf_counter() - started
    final = wait_all_ended(client, accepted, job_timeout)
    sampler.stop()
    describe_latencies = []
    for name in accepted[:200]:
        t = time.perf_counter()
        client.describe_compilation_job(CompilationJobName=name)
        describe_latencies.append(time.perf_counter() - t)
    in_list = listed(client, prefix)
    after = proc_status(daemon.proc.pid)
    return {
        "transport": transport, "requests": count, "accepted": len(accepted),
        "refused": {code: sum(1 for c in refused.values() if c == code) for code in sorted(set(refused.values()))},
        "burst_seconds": round(burst_s, 2), "create_ms": percentiles(latencies),
        "describe_ms_after": percentiles(describe_latencies),
        "final_status": {s: sum(1 for v in final.values() if v == s) for s in sorted(set(final.values()))},
        "not_ended": sorted(n for n in accepted if final.get(n) not in ENDED),
        "accepted_not_listed": sorted(set(accepted) - in_list), "refused_but_listed": sorted(set(refused) & in_list),
        "rss_mb": {"before": round(before["rss_mb"], 1), "peak": round(sampler.peak_rss, 1), "after": round(after["rss_mb"], 1)},
        "fds": {"before": before["fds"], "peak": sampler.peak_fds, "after": after["fds"]},
    }


def load_test(tmp: Path, broker, count: int, queue_limit: int, job_timeout: float = 600) -> list[dict]:
    """Both bursts against one scripted daemon serving HTTP and MQTT on `broker`."""
    from agent.client.remote import RemoteAgent
    from agent.config import MqttConfig
    from tests.service.daemon_process import DaemonProcess

    env = {"NEO_AGENT_MQTT_ENABLED": "true", "NEO_AGENT_MQTT_HOST": "127.0.0.1", "NEO_AGENT_MQTT_PORT": str(broker.port),
           "NEO_AGENT_MQTT_THING_NAME": "load-thing", "NEO_AGENT_QUEUE_LIMIT": str(queue_limit),
           "NEO_AGENT_CONCURRENCY": "2", "NEO_AGENT_FILE_URI_CHANNELS": "http,mqtt"}  # scripted requests: file://
    daemon = DaemonProcess(tmp / "state", scripted=True, env=env).start()
    try:
        daemon.wait_log("mqtt://127.0.0.1")
        results = [run_burst(daemon, "http", http_create(http_client(daemon)), count, job_timeout)]
        settings = MqttConfig(host="127.0.0.1", port=broker.port, thing_name="load-client")
        with RemoteAgent(settings, "load-thing") as remote:
            results.append(run_burst(daemon, "mqtt", mqtt_create(remote), count, job_timeout))
        return results
    finally:
        daemon.stop()


def markdown(results: list[dict], meta: dict) -> str:
    lines = ["# Load: CreateCompilationJob in a burst", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}  ",
             f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores_available']} cores, "
             f"{meta['machine']['memory_gb']} GB; load average (1 min) at start {meta['load_start']:.2f}  ",
             f"Agent: `neo-agent run` with the scripted pipeline (jobs report a stage and end), queue limit "
             f"{meta['queue_limit']}, 2 jobs at a time; {THREADS} client threads.", "",
             "| transport | requests | accepted | refused | all accepted ended | lost | Create p50 / p99 ms | "
             "Describe p99 ms (after) | agent RSS MiB before / peak / after | open fds before / peak / after |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        refused = ", ".join(f"{n} {code}" for code, n in r["refused"].items()) or "0"
        lost = len(r["not_ended"]) + len(r["accepted_not_listed"]) + len(r["refused_but_listed"])
        lines.append(f"| {r['transport']} | {r['requests']} | {r['accepted']} | {refused} | "
                     f"{', '.join(f'{n} {s}' for s, n in r['final_status'].items())} | {lost} | "
                     f"{r['create_ms']['p50']} / {r['create_ms']['p99']} | {r['describe_ms_after']['p99']} | "
                     f"{r['rss_mb']['before']} / {r['rss_mb']['peak']} / {r['rss_mb']['after']} | "
                     f"{r['fds']['before']} / {r['fds']['peak']} / {r['fds']['after']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from benchmarks.published_models import machine
    from tests.mosquitto import Mosquitto

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--queue-limit", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    meta = {"command": "python " + " ".join(sys.argv), "machine": machine(), "queue_limit": args.queue_limit,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "load_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker").start()
        try:
            results = load_test(Path(tmp), broker, args.requests, args.queue_limit)
        finally:
            broker.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    (args.out / "load.md").write_text(markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
