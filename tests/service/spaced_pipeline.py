"""The runner tests' scripted pipeline, reached through the API: steps separated by spaces.

A request's tag values must match SageMaker's pattern, which has no ';', so a job created
through the API writes `stage=compile ignore-term sleep=60`; this turns it into the scripted
pipeline's `stage=compile;ignore-term;sleep=60` (see tests/runner/scripted_pipeline.py).
"""
from __future__ import annotations

import dataclasses

from tests.runner import scripted_pipeline


def run(job, config, workdir, report):
    tags = [dict(tag, Value=tag["Value"].replace(" ", ";")) if tag.get("Key") == "test-script" else tag
            for tag in job.request.get("Tags", [])]
    job = dataclasses.replace(job, request={**job.request, "Tags": tags})
    return scripted_pipeline.run(job, config, workdir, report)
