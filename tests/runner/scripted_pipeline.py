"""A pipeline that does what the job's `test-script` tag says, for runner tests.

The runner's job is process management: deadlines, Stop, memory, restarts. These need
timings a real compile cannot promise, so the tests script them. Steps are separated by
spaces (SageMaker's tag pattern allows them; a job made through the API must use them) or ';':
    stage=NAME           report a stage
    sleep=SECONDS        sleep (interruptible, in Python)
    ignore-term          ignore SIGTERM from here on (a child stuck where Stop cannot reach it)
    ignore-alarm         ignore the child's own deadline (so only the parent's kill can end it)
    alloc=MIB            allocate and touch MIB of memory, held
    derive=JSON          report a DerivedDataInputConfig
    fail=REASON          raise a ClientError with this detail
    crash                exit at once with code 3, no message
    publish=MIB          pack MIB of random bytes as the artifact and upload it for real to the job's
                         S3OutputLocation with agent.pipeline.upload and the job's credentials
                         (agent.pipeline.JobStorage), waiting out storage outages until the job's
                         deadline as the real upload stage does; returns its Result. Each part
                         uploaded is reported as the real stage reports it ("uploaded part N of M")
    pause-after-part=N:SECONDS   in a later publish, sleep SECONDS once part N is in S3 (so a test can
                         break S3 between two parts of a multipart upload, not before or after it)
    replace=MIB          in a later publish, another writer puts MIB of other bytes at the artifact's
                         key just before the agent checks what S3 holds (its HeadObject)
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

from agent.errors import ClientError


@dataclasses.dataclass
class Result:
    artifact_uri: str
    artifact_digest: str
    metrics: dict
    local_artifact: str = ""


def run(job, config, workdir, report):
    tags = {t["Key"]: t["Value"] for t in job.request.get("Tags", [])}
    held = []
    publishing: dict = {}
    for step in tags.get("test-script", "").replace(";", " ").split():
        key, _, value = step.partition("=")
        if key == "stage":
            report.stage(value, 50.0)
        elif key == "sleep":
            time.sleep(float(value))
        elif key == "ignore-alarm":
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
        elif key == "ignore-term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        elif key == "alloc":
            block = bytearray(int(float(value) * 2**20))
            for i in range(0, len(block), 4096):
                block[i] = 1
            held.append(block)
        elif key == "derive":
            report.derived(value)
        elif key == "fail":
            raise ClientError("InputConfiguration", value)
        elif key == "crash":
            os._exit(3)
        elif key == "pause-after-part":
            part, _, seconds = value.partition(":")
            publishing["pause"] = (int(part), float(seconds))
        elif key == "replace":
            publishing["replace"] = float(value)
        elif key == "publish":
            return _publish(job, config, Path(workdir), report, float(value), **publishing)
    return Result(artifact_uri=f"file://{workdir}/out.tar.gz", artifact_digest="ab12", metrics={"scripted": True})


def _publish(job, config, workdir: Path, report, mib: float, pause: tuple[int, float] | None = None,
             replace: float | None = None) -> Result:
    from agent import pipeline
    from agent.storage import Patience, digest, join, parse

    report.stage("package", 90.0)
    archive = workdir / "out" / "scripted-ml_c5.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(os.urandom(int(mib * 2**20)))
    metrics = workdir / "metrics.json"
    metrics.write_text('{"scripted": true}')
    report.stage("upload", 95.0)
    patience = Patience(deadline=job.start_time + job.max_runtime,
                        on_wait=lambda message: report.stage("upload", 95.0, message))
    paused = []

    def on_part(done: int, total: int) -> None:
        report.stage("upload", 95.0, f"uploaded part {done} of {total}")
        if pause and done == pause[0] and not paused:
            paused.append(done)
            time.sleep(pause[1])

    client = pipeline.JobStorage(job, config).client("OutputConfig")
    if replace is not None:
        _replace_before_the_check(client, parse(join(job.output_config["S3OutputLocation"], archive.name)),
                                  os.urandom(int(replace * 2**20)))
    stored = pipeline.upload(archive, metrics, job.output_config, "scripted-ml_c5", patience=patience,
                             log_path=report.log_path, client=client, on_part=on_part)
    return Result(artifact_uri=stored.uri, artifact_digest=digest(archive), metrics={"scripted": True},
                  local_artifact=str(archive))


def _replace_before_the_check(client, loc, body: bytes) -> None:
    """Another writer (a client of its own) puts `body` at `loc` just before `client` first asks
    S3 what it holds there."""
    import boto3

    other = boto3.client("s3")
    done = []

    def replace(params, **_):
        if not done and params.get("Key") == loc.key:
            done.append(True)
            other.put_object(Bucket=loc.bucket, Key=loc.key, Body=body, ChecksumAlgorithm="SHA256")

    client.meta.events.register("before-parameter-build.s3.HeadObject", replace)
