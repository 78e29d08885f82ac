"""`neo-agent demo`: a Neo compilation job from request to verified, benchmarked artifact.

Everything is embedded: an S3-protocol server (moto, its own process, on loopback), a sample
ONNX model packed as Neo wants it (model.tar.gz), and a CreateCompilationJob request that
leaves DataInputConfig out so the agent derives the input shapes. The request goes through
the same API that the HTTP and MQTT transports use.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.config import AgentConfig
from agent.demo.s3server import S3Server

BUCKET = "neo-demo"
DEMO_STATE_DIR = Path(".state") / "demo"

DEMO_TUNING_SECONDS = 60
HOST_TARGET_DEVICE = {"x86_64": "ml_c5", "aarch64": "ml_c6g"}


def demo_request(name: str, model_uri: str, output_uri: str) -> dict:
    return {
        "CompilationJobName": name,
        "RoleArn": "arn:aws:iam::000000000000:role/NeoEdgeDemo",
        "InputConfig": {"S3Uri": model_uri, "Framework": "ONNX"},
        "OutputConfig": {
            "S3OutputLocation": output_uri,
            "TargetDevice": HOST_TARGET_DEVICE.get(platform.machine(), "ml_c5"),
            # A short on-device tuning run (the agent's default is tuning.default_seconds, 600 s).
            "CompilerOptions": json.dumps({"tuning_seconds": DEMO_TUNING_SECONDS}),
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 900},
        "Tags": [{"Key": "purpose", "Value": "neo-agent demo"}],
    }


def demo(state_dir: Path | None = None, keep: bool = False, out=sys.stdout) -> int:
    import boto3

    from agent.cli import run_foreground
    from agent.samples import make_sample_archive

    state_dir = Path(state_dir or DEMO_STATE_DIR).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    print(f"neo-agent demo: state directory {state_dir}", file=out)
    with S3Server(log_path=str(state_dir / "s3-server.log")) as s3:
        os.environ.update(s3.env())  # boto3 here and in every compile child now talks to it
        print(f"S3-protocol server (moto) on {s3.endpoint_url}, bucket s3://{BUCKET}", file=out)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        with tempfile.TemporaryDirectory() as tmp:
            archive = make_sample_archive(Path(tmp))
            client.upload_file(str(archive), BUCKET, "models/model.tar.gz")
        name = time.strftime("demo-%Y%m%d-%H%M%S")
        request = demo_request(name, f"s3://{BUCKET}/models/model.tar.gz", f"s3://{BUCKET}/compiled/")
        print("CreateCompilationJob request:", file=out)
        print(json.dumps(request, indent=2), file=out, flush=True)
        code = run_foreground(AgentConfig.load(state_dir=state_dir), request, out=out)
        if code == 0:
            code = _run_artifact(client, state_dir, name, out)
        if keep:
            input(f"S3 server still on {s3.endpoint_url}; press Enter to stop it. ")
    return code


def _run_artifact(client, state_dir: Path, name: str, out) -> int:
    """Fetch the compiled artifact back from S3 and run it the way a user would."""
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="compiled/")
    keys = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".tar.gz")]
    if not keys:
        print("no artifact found under s3://neo-demo/compiled/", file=out)
        return 1
    local = state_dir / "artifacts" / name / Path(keys[0]).name
    local.parent.mkdir(parents=True, exist_ok=True)
    client.download_file(BUCKET, keys[0], str(local))
    print(f"\nDownloaded s3://{BUCKET}/{keys[0]} -> {local}", file=out)
    print(f"$ python -m agent.runtime {local}", file=out, flush=True)
    return subprocess.call([sys.executable, "-m", "agent.runtime", str(local)], stdout=out if out is sys.stdout else None)
