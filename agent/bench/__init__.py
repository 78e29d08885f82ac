"""Latency measurement, statistics, the reference runtime, verification.

    make_inputs / save_npz / load_npz    the same input tensors for every engine (inputs.py)
    run_engine                           one engine in a fresh worker process (engines.py, worker.py)
    compare                              compiled outputs against the reference's (verify.py)
    summarize                            latency statistics as onnxruntime_perf_test reports them (stats.py)

Importing this package imports numpy but neither TVM nor onnxruntime: those live in the worker.
"""
from agent.bench.engines import ENGINES, run_engine
from agent.bench.inputs import load_npz, make_inputs, save_npz
from agent.bench.stats import summarize
from agent.bench.verify import compare

__all__ = ["ENGINES", "compare", "load_npz", "make_inputs", "run_engine", "save_npz", "summarize"]
