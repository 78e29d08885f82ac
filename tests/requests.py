"""CreateCompilationJob bodies for tests: Neo's request with the agent's ONNX defaults."""
from __future__ import annotations


def job_request(name: str, model_uri: str, output_uri: str, **extra) -> dict:
    body = {
        "CompilationJobName": name,
        "RoleArn": "arn:aws:iam::123456789012:role/neo",
        "InputConfig": {"S3Uri": model_uri, "Framework": "ONNX"},
        "OutputConfig": {"S3OutputLocation": output_uri, "TargetDevice": "ml_c5"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }
    body.update(extra)
    return body
