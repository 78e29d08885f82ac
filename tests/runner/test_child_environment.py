"""The S3 secrets reach the compile child through its environment, never through spec.json."""
from __future__ import annotations

import json
import time

from agent.config import S3Config
from agent.runner.process import ChildProcess

from tests.runner.conftest import make_config, scripted_job


def test_secrets_reach_the_child_by_environment_only(tmp_path, monkeypatch):
    monkeypatch.delenv("NEO_AGENT_S3_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.delenv("NEO_AGENT_S3_SESSION_TOKEN", raising=False)
    # Secrets of the endpoints the agent serves, and Greengrass's IPC token: not the child's business.
    monkeypatch.setenv("NEO_AGENT_HTTP_CREDENTIALS", "AKIDHTTP:httpsecret")
    monkeypatch.setenv("NEO_AGENT_MQTT_PASSWORD", "mqttsecret")
    monkeypatch.setenv("SVCUID", "ipc-token")
    s3 = S3Config(access_key_id="AKIDCONFIG", secret_access_key="s3cr3t", session_token="t0ken")
    config = make_config(tmp_path, pipeline_module="tests.runner.secret_probe_pipeline", s3=s3)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"job": scripted_job("probe", "").to_dict(), "config": config.to_child(),
                                     "deadline": time.time() + 30, "workdir": str(tmp_path / "work")}))
    messages: list[dict] = []
    child = ChildProcess(spec_path, tmp_path / "job.log", messages.append, memory_limit_mb=config.memory_limit_mb,
                         kill_at=time.time() + 60, stop_grace_s=1.0, env=config.child_environment())
    child.start()
    outcome = child.wait()
    assert outcome.result is not None, (tmp_path / "job.log").read_text()
    seen = json.loads(next(m for m in messages if m["event"] == "derived")["data_input_config"])
    assert seen == {"access_key_id": "AKIDCONFIG", "secret": "s3cr3t", "token": "t0ken",
                    "left_in_environment": [],  # read, then dropped: the child's own helpers never see them
                    "withheld_seen": []}
    assert "s3cr3t" not in spec_path.read_text() and "t0ken" not in spec_path.read_text()
