"""The Neo compilation API, independent of any transport.

    service.py     CompilationService: the five operations over a JobStore and a runner
    shapes.py      validation driven by botocore's sagemaker model, in AWS's wording
    validation.py  Neo's rules beyond the model, and what this device can compile
    javaregex.py   the model's Java patterns, run with the `regex` module
    arns.py        compilation-job ARNs

Errors are agent.errors' ApiError tree, plus UnknownOperationException for `call`.
"""
from agent.api.service import CompilationService, Runner
from agent.errors import UnknownOperationException

__all__ = ["CompilationService", "Runner", "UnknownOperationException"]
