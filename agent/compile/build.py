"""IRModule -> Relax VM executable -> model.so, with TVM's errors translated.

Which side is at fault when a build fails, and why:
  - TVM's operator errors (tvm.error.OpError and subclasses) mean the model uses something
    the compiler lacks. Neo reports those as ClientError with its own keywords
    (OperatorNotImplemented, OperatorAttributeNotImplemented, ...), and so does the agent:
    the user's remedy is to change the model.
  - Any other failure after the frontend accepted the model is a defect or limit of the
    compiler on this device (a pass that crashes, a shape op left unlowered, no C compiler
    to link with), so it is ServerError("CompilationError", <TVM's line>):
    the model was valid, and the message is what a maintainer needs to fix it.
  - MemoryError is left alone: the runner's child reports it as ModelSizeTooBig with the
    device's memory limit.

The compile is `optimize` (agent.compile.optimize: layout, fusion, a rule-made CPU schedule
for every PrimFunc; no tuning) and then `tvm.compile`. Errors of either are translated the
same way. TVM is imported inside functions, like everywhere in agent.compile.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.compile import operator_error, summarize_error
from agent.compile.optimize import DEFAULT_LAYOUT
from agent.errors import ServerError

if TYPE_CHECKING:  # pragma: no cover
    import tvm

log = logging.getLogger(__name__)

KEYWORD = "CompilationError"
LIBRARY_NAME = "model.so"
OBJECTS_NAME = "model.tar"  # a cross-compiled library: object files the device links when it loads them


def _translate(exc: BaseException, doing: str) -> Exception:
    translated = operator_error(exc, f"TVM 0.27, while {doing}")
    if translated is not None:
        return translated
    return ServerError(KEYWORD, f"TVM 0.27 failed while {doing}: {summarize_error(exc)}")


@dataclasses.dataclass
class Built:
    """What the compile stage produced."""

    path: Path                  # model.so, or model.tar of objects (cross-compiled)
    seconds: dict[str, float]   # {"optimize", "build", "export"}
    schedule: dict[str, Any]    # optimize's report: metrics.json's "schedule"


def optimize(mod: "tvm.IRModule", target: "tvm.target.Target",
             layout: str = DEFAULT_LAYOUT) -> tuple["tvm.IRModule", dict[str, Any]]:
    """agent.compile.optimize.optimize, with TVM's errors translated."""
    from agent.compile import optimize as passes

    try:
        return passes.optimize(mod, target, layout)
    except MemoryError:
        raise
    except Exception as exc:
        raise _translate(exc, "optimizing the model") from exc


def build(mod: "tvm.IRModule", target: "tvm.target.Target") -> "tvm.runtime.Executable":
    """Compile a Relax module (optimized or not) with TVM's build pipeline for `target`,
    after computing the packed weights its schedules asked for (optimize.pack_weights)."""
    import tvm

    from agent.compile.optimize import pack_weights

    start = time.perf_counter()
    try:
        with target:
            mod = pack_weights(mod)
        executable = tvm.compile(mod, target=target)
    except MemoryError:
        raise  # the runner's child reports it as ModelSizeTooBig with the memory limit
    except Exception as exc:
        raise _translate(exc, "building the model") from exc
    log.info("built in %.1f s for %s", time.perf_counter() - start, target)
    return executable


def export(executable: Any, out_dir: Path, *, linkable: bool = True) -> Path:
    """Write `out_dir/model.so`, linked by the host's C compiler (what tvm.runtime.load_module
    loads); or, for code this machine cannot link (`linkable` False: another architecture),
    `out_dir/model.tar` of object files, which tvm.runtime.load_module links on the device."""
    from tvm.support import cc

    if linkable and not cc.get_cc():
        raise ServerError(KEYWORD, "no C compiler found to link model.so; install gcc on this device")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / (LIBRARY_NAME if linkable else OBJECTS_NAME)
    start = time.perf_counter()
    try:
        executable.export_library(str(path))
    except MemoryError:
        raise
    except Exception as exc:
        raise _translate(exc, f"writing {path.name}") from exc
    log.info("exported %s (%d bytes) in %.1f s", path, path.stat().st_size, time.perf_counter() - start)
    return path


def build_and_export(mod: "tvm.IRModule", target: "tvm.target.Target", out_dir: Path, *,
                     layout: str = DEFAULT_LAYOUT, linkable: bool = True) -> Built:
    """The compile stage: optimize, build, write model.so (or model.tar, see export); each step timed."""
    start = time.perf_counter()
    mod, schedule = optimize(mod, target, layout)
    optimized = time.perf_counter()
    executable = build(mod, target)
    built = time.perf_counter()
    path = export(executable, out_dir, linkable=linkable)
    return Built(path, {"optimize": optimized - start, "build": built - optimized,
                        "export": time.perf_counter() - built}, schedule)
