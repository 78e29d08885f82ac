"""Runs adversarial models through the real prepare stage in a process of its own.

    python -m tests.badinput.model_child CASES.json RESULTS.json

CASES.json is [{"id", "path", "data_input_config"}]. Each case goes through
agent.compile.onnx_frontend.load_and_import, as the compile child's prepare stage calls it,
under an RLIMIT_DATA as the compile child sets one, and is reported as {"id", "outcome" (the
FailureReason, "imported", or "UNEXPECTED <type>: ..."), "seconds", "peak_mb"}: the peak
resident memory while the case ran, above what the process held before it (the kernel's
high-water mark is reset before each case through /proc/self/clear_refs).
"""
from __future__ import annotations

import json
import re
import resource
import sys
import time
from pathlib import Path

DATA_LIMIT = 4 << 30  # what a compile child with a 2 GiB memory limit gets (DATA_LIMIT_FACTOR 2)


def _status_mb(field: str) -> float:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def run_case(case: dict) -> dict:
    from agent.compile import onnx_frontend
    from agent.errors import JobFailure

    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    try:
        onnx_frontend.load_and_import(Path(case["path"]), case.get("data_input_config"))
        outcome = "imported"
    except JobFailure as failure:
        outcome = failure.reason
    except MemoryError:
        outcome = "UNEXPECTED MemoryError (the compile child turns it into ModelSizeTooBig)"
    except BaseException as exc:  # noqa: BLE001 - anything else is the finding
        outcome = f"UNEXPECTED {type(exc).__name__}: {str(exc)[:300]}"
    return {"id": case["id"], "outcome": outcome, "seconds": time.perf_counter() - start,
            "peak_mb": _status_mb("VmHWM") - before}


def main(argv: list[str]) -> int:
    resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, DATA_LIMIT))
    import logging

    logging.disable(logging.WARNING)  # the frontend's warnings are not what is measured
    import importlib

    for module in ("onnx", "onnxslim", "tvm.relax.frontend.onnx"):  # loaded once, before the first case
        importlib.import_module(module)

    cases = json.loads(Path(argv[1]).read_text())
    results = [run_case(case) for case in cases]
    Path(argv[2]).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
