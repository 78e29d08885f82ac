"""The README's main command, `neo-agent demo`, as a user runs it."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys


def test_demo_compiles_verifies_benchmarks_and_runs_the_artifact(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(NEO_AGENT_BENCH_MIN_ITERATIONS="5", NEO_AGENT_BENCH_MIN_SECONDS="0.1")
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "demo", "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Status           COMPLETED" in out
    assert "Artifact         s3://neo-demo/compiled/model-ml_c5.tar.gz" in out
    assert 'Derived inputs   {"input": [1, 3, 64, 64]}' in out
    assert "verification     passed" in out and "speedup vs onnxruntime" in out
    # The demo asks for a short on-device tuning run, and says what it did.
    assert re.search(r"tuning           60 s budget \(CompilerOptions tuning_seconds\): \d+ trials in", out), out
    # The artifact came back from S3 and ran through the documented runtime.
    assert "output logits: shape [1, 10] float32" in out
    # The demo's S3 server process is gone once the demo returns.
    port = int(re.search(r"\(moto\) on http://127\.0\.0\.1:(\d+)", out).group(1))
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
