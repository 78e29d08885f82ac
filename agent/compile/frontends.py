"""Which Framework values this device compiles, and how: the one table the API, the
pipeline and the benchmark read.

    FRONTENDS["PYTORCH"]             suffixes, frontend module, reference engine, packages needed
    supported()                      the Frameworks whose packages are installed, in table order
    refusal(framework)               why CreateCompilationJob refuses a Framework, or None
    version_refusal(framework, v)    why it refuses that FrameworkVersion, or None
    frontend(framework)              the entry, or ClientError InputConfiguration (a job's check)
    load_and_import(framework, path, data_input_config, framework_version) -> Imported

    Framework   model file (one per archive)   frontend                        reference engine
    ONNX        .onnx                          agent.compile.onnx_frontend     onnxruntime
    PYTORCH     .pt/.pth (TorchScript), .pt2   agent.compile.torch_frontend    torch
                (torch.export ExportedProgram)
    TFLITE      .tflite                        agent.compile.tflite_frontend   litert

The other Frameworks Neo names (TENSORFLOW, KERAS, MXNET, DARKNET, XGBOOST, SKLEARN) have no
frontend in TVM 0.27 (python/tvm/relax/frontend holds onnx, torch, tflite, stablehlo and nn
only); CreateCompilationJob refuses them saying so, what the user can convert the model to,
and what this device compiles.

FrameworkVersion (Neo allows it for PYTORCH and TFLITE among these) is the version of the
framework that saved the model. Files from older releases load in newer ones, not the other
way round, so the rule is: its major.minor must be at most the installed one's (torch for
PYTORCH; for TFLITE the TensorFlow Lite schema release the `tflite` parser package follows,
which is what TVM reads the file with). Absent, the installed version is assumed.

Pure Python: nothing here imports a framework. The packages are looked up in the installed
distributions' metadata, so the agent's main process can ask without loading torch.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import re
from pathlib import Path
from typing import Any

from agent.errors import ClientError


@dataclasses.dataclass(frozen=True)
class Frontend:
    framework: str                      # Neo's Framework value
    suffixes: tuple[str, ...]           # the archive must hold exactly one file with one of these
    module: str                         # has load_and_import(path, data_input_config, framework_version)
    reference: str                      # the engine (agent.bench.engines) whose outputs are the truth
    packages: tuple[str, ...]           # distributions the frontend and the reference need
    versioned_by: str | None = None     # the distribution FrameworkVersion is compared with
    label: str = ""                     # the framework's name in messages

    def suffix_text(self) -> str:
        return "/".join(self.suffixes)


FRONTENDS: dict[str, Frontend] = {
    "ONNX": Frontend("ONNX", (".onnx",), "agent.compile.onnx_frontend", "onnxruntime",
                     ("onnx", "onnxslim", "onnxruntime"), label="ONNX"),
    "PYTORCH": Frontend("PYTORCH", (".pt", ".pth", ".pt2"), "agent.compile.torch_frontend", "torch",
                        ("torch",), versioned_by="torch", label="PyTorch"),
    "TFLITE": Frontend("TFLITE", (".tflite",), "agent.compile.tflite_frontend", "litert",
                       ("tflite", "ai-edge-litert"), versioned_by="tflite", label="TensorFlow Lite"),
}

# What the user can do instead, for each Framework TVM 0.27 has no frontend for.
NO_FRONTEND = {
    "TENSORFLOW": "convert the model to TFLite (tf.lite.TFLiteConverter) or ONNX (tf2onnx) and submit that",
    "KERAS": "convert the model to TFLite (tf.lite.TFLiteConverter) or ONNX (tf2onnx) and submit that",
    "MXNET": "export the model to ONNX (mxnet.onnx.export_model) and submit that",
    "DARKNET": "convert the model to ONNX and submit that",
    "XGBOOST": "TVM compiles tensor graphs, not tree ensembles; run the model with XGBoost itself",
    "SKLEARN": "TVM compiles tensor graphs, not scikit-learn estimators; run the model with scikit-learn itself",
}


@functools.lru_cache(maxsize=None)
def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, read once per process: reading the package
    metadata was over half of each CreateCompilationJob's time (1.4 of 2.3 ms). A package
    installed while the agent runs counts after its restart, as its import would anyway."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_packages(framework: str) -> list[str]:
    return [p for p in FRONTENDS[framework].packages if installed_version(p) is None]


def supported() -> tuple[str, ...]:
    """The Frameworks this device compiles now: a frontend exists and its packages are installed."""
    return tuple(name for name in FRONTENDS if not missing_packages(name))


def _supported_text() -> str:
    return ", ".join(supported()) or "nothing (no frontend's packages are installed)"


def refusal(framework: str) -> str | None:
    """CreateCompilationJob's ValidationException text for a Framework this device cannot
    compile, or None when it can."""
    if framework in FRONTENDS:
        missing = missing_packages(framework)
        if not missing:
            return None
        why = f"the {', '.join(missing)} package{'s are' if len(missing) > 1 else ' is'} not installed here"
    elif framework in NO_FRONTEND:
        why = f"TVM 0.27 has no {framework} frontend; {NO_FRONTEND[framework]}"
    else:
        why = "it is not a framework this agent knows"
    return f"Framework {framework} is not supported on this device ({why}); it compiles {_supported_text()}."


_VERSION = re.compile(r"(\d+)\.(\d+)")


def major_minor(version: str) -> tuple[int, int] | None:
    match = _VERSION.match(version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def version_refusal(framework: str, framework_version: str | None) -> str | None:
    """Why FrameworkVersion cannot be honoured here (see the module docstring), or None."""
    entry = FRONTENDS.get(framework)
    if framework_version is None or entry is None or entry.versioned_by is None:
        return None
    installed = installed_version(entry.versioned_by)
    if installed is None:
        return None  # refusal() already says the package is missing
    wanted, have = major_minor(framework_version), major_minor(installed)
    if wanted is None:
        return (f"InputConfig.FrameworkVersion {framework_version!r} is not a {entry.label} version "
                f"(major.minor, e.g. {have[0]}.{have[1]})." if have else None)
    if have is not None and wanted > have:
        return (f"InputConfig.FrameworkVersion {framework_version} is newer than the {entry.label} on this device "
                f"({entry.versioned_by} {installed}): a model saved by a newer release may not load in an older "
                f"one. This device compiles {framework} models saved by version {have[0]}.{have[1]} or earlier.")
    return None


def frontend(framework: str) -> Frontend:
    """The table entry for a job's Framework; a job whose Framework the API would refuse (a
    record written before the device changed) fails with the API's words."""
    problem = refusal(framework)
    if problem:
        raise ClientError("InputConfiguration", problem)
    return FRONTENDS[framework]


def find_model(files: list[Path], framework: str, root: Path) -> Path:
    """The one model file among an archive's files, unpacked under `root` (Neo: "Exactly one
    .onnx file is allowed for ONNX model")."""
    entry = FRONTENDS[framework]
    candidates = [f for f in files if f.name.lower().endswith(entry.suffixes)]
    if len(candidates) != 1:
        names = ", ".join(str(f.relative_to(root)) for f in candidates) or "none"
        raise ClientError("InputConfiguration", f"Exactly one {entry.suffix_text()} file is allowed for {framework} "
                                                f"model, found {len(candidates)}: {names}")
    return candidates[0]


def load_and_import(framework: str, path: Path, data_input_config: str | None,
                    framework_version: str | None = None) -> Any:
    """The prepare stage for any supported Framework: the frontend's Imported (see onnx_frontend)."""
    entry = frontend(framework)
    module = importlib.import_module(entry.module)
    if framework == "ONNX":
        return module.load_and_import(path, data_input_config)
    return module.load_and_import(path, data_input_config, framework_version)
