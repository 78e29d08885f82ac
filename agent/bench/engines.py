"""The engines a model is measured on, each run in a fresh process of its own.

Parent side (the agent; imports neither TVM nor onnxruntime):

    run_engine("onnxruntime", Path("model.onnx"), Path("inputs.npz"), threads=2,
               outputs_npz=Path("ref.npz"), bench=BenchConfig(...), timeout_s=600) -> result dict

starts `python -m agent.bench.worker` (see worker.py for the result JSON), waits at most
`timeout_s`, and kills the worker's whole process group if it overruns. One process per engine
means each engine's peak memory and first-inference time are its own, and a crash in native
code costs a ServerError, not the agent. Failures:

    ServerError: EngineWorker   the worker crashed or exited non-zero (the tail of its stderr
                                follows), or ran past timeout_s and was killed

Every model the worker sees was made or checked by the agent before (the reference .onnx, the
compiled artifact), so any failure in it is the agent's: a ServerError.

Child side (the worker only): open_engine(name, path, threads) gives one small face,

    engine.inputs / engine.outputs   [{"name", "shape", "dtype"}]
    engine.run(feed) -> [np.ndarray]  outputs in the model's order
    engine.version

after set_threads(threads) has put the thread count where each runtime reads it at import.
"tvm" takes a compiled artifact, a directory holding model.so + metadata.json or a .tar.gz of
one, loaded by agent.runtime.load(): the loader users run on their devices, so what is
measured is what they will run. The references, one per Framework (agent.compile.frontends):

    "onnxruntime"  an .onnx file, on onnxruntime's CPU provider
    "torch"        a TorchScript file (.pt/.pth, torch.jit.load) or a torch.export
                   ExportedProgram (.pt2, torch.export.load), run under torch.no_grad() with
                   torch.set_num_threads(threads); inputs are the forward's arguments by name
                   (agent.compile.torch_frontend.input_names), outputs flattened in order
    "litert"       a .tflite file on the LiteRT interpreter (ai_edge_litert), num_threads=threads
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import agent
from agent.config import BenchConfig
from agent.errors import ServerError

ENGINES = ("onnxruntime", "tvm", "torch", "litert")
KEYWORD = "EngineWorker"
STDERR_TAIL_CHARS = 600  # the tail must fit in a 1024-character FailureReason with its preamble
ORT_DTYPES = {
    "float": "float32", "double": "float64", "float16": "float16", "bool": "bool",
    **{t: t for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")},
}


def run_engine(engine: str, model_path: Path, inputs_npz: Path, *, threads: int,
               outputs_npz: Path | None = None, bench: BenchConfig | None = None,
               timeout_s: float) -> dict:
    """Run `engine` on the inputs in a fresh worker process and return its result dict."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    with tempfile.TemporaryDirectory(prefix="neo-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "agent.bench.worker", "--engine", engine,
               "--model", str(model_path), "--inputs", str(inputs_npz),
               "--threads", str(threads), "--result", str(result_path)]
        if outputs_npz is not None:
            cmd += ["--outputs", str(outputs_npz)]
        if bench is not None:
            cmd += ["--bench", json.dumps(dataclasses.asdict(bench))]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=_child_env(threads), start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc)
            raise ServerError(KEYWORD, f"The {engine} worker did not finish within {timeout_s:g} s "
                                       "and was killed") from exc
        except BaseException:
            _kill_group(proc)
            raise
        if proc.returncode != 0 or not result_path.is_file():
            raise ServerError(KEYWORD, f"The {engine} worker {_exit_words(proc.returncode)}: "
                                       f"{_tail(stderr)}")
        return json.loads(result_path.read_text())


# Variables that carry credentials or name them: AWS keys and tokens, Greengrass's token
# exchange and IPC token (SVCUID), the agent's own settings (NEO_AGENT_HTTP_CREDENTIALS,
# NEO_AGENT_MQTT_PASSWORD, ... when set in its environment). A worker runs the compiled model
# and onnxruntime on the user's model, and needs none of them.
CREDENTIAL_PREFIXES = ("AWS_", "NEO_AGENT_")
CREDENTIAL_NAMES = frozenset({"SVCUID"})


def credential_free_environment() -> dict[str, str]:
    """This process's environment less every credential, with the agent importable from
    wherever this process found it: for the processes that run the user's model."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(CREDENTIAL_PREFIXES) and name not in CREDENTIAL_NAMES}
    root = str(Path(agent.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _child_env(threads: int) -> dict[str, str]:
    """The worker's environment: thread counts set before anything is imported, and no credentials."""
    env = credential_free_environment()
    env["TVM_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _exit_words(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    if returncode == 0:
        return "exited without writing a result"
    return f"exited with status {returncode}"


def _tail(stderr: bytes) -> str:
    """The end of stderr (where a traceback names the exception) on one line, for a FailureReason."""
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip(" ^~")]
    text = " ".join(" ".join(lines).split())  # without traceback's ^^^ markers, on one line
    if not text:
        return "(no output on stderr)"
    return text if len(text) <= STDERR_TAIL_CHARS else "..." + text[-STDERR_TAIL_CHARS:]


# --- child side -------------------------------------------------------------------------------

def set_threads(threads: int) -> None:
    """Both runtimes size their thread pools from the environment when first used."""
    os.environ["TVM_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(threads)


def open_engine(name: str, model_path: Path, threads: int):
    if name == "onnxruntime":
        return OnnxRuntimeEngine(Path(model_path), threads)
    if name == "tvm":
        return TvmEngine(Path(model_path))
    if name == "torch":
        return TorchEngine(Path(model_path), threads)
    if name == "litert":
        return LiteRtEngine(Path(model_path), threads)
    raise ValueError(f"unknown engine {name!r}; expected one of {ENGINES}")


class OnnxRuntimeEngine:
    """onnxruntime's CPU provider, configured as onnxruntime_perf_test -x N -y 1 -o 99 runs it."""

    def __init__(self, model_path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [_ort_spec(i) for i in self.session.get_inputs()]
        self.outputs = [_ort_spec(o) for o in self.session.get_outputs()]
        self.version = ort.__version__

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feed)


def _ort_spec(arg) -> dict:
    kind = arg.type.removeprefix("tensor(").removesuffix(")")
    return {"name": arg.name, "shape": list(arg.shape), "dtype": ORT_DTYPES.get(kind, kind)}


class TvmEngine:
    """A compiled artifact on TVM's Relax VM, loaded the way users load it."""

    def __init__(self, path: Path):
        import tvm

        from agent import runtime

        self.model = runtime.load(path)
        self.inputs, self.outputs = self.model.inputs, self.model.outputs
        self.version = tvm.__version__

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.model.run(feed)


class TorchEngine:
    """The user's PyTorch model on torch itself, eager CPU, no autograd."""

    def __init__(self, model_path: Path, threads: int):
        import torch

        from agent.compile import torch_frontend

        torch.set_num_threads(threads)
        self._torch = torch
        self.module, names = torch_frontend.load_runnable(model_path)
        self.inputs = [{"name": name, "shape": [], "dtype": ""} for name in names]  # shapes: the feed's
        self.outputs: list[dict] = []  # named output0.. once the first run shows how many
        self.version = torch.__version__

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        from agent.compile.torch_frontend import flatten_outputs

        with self._torch.no_grad():
            result = self.module(*[self._torch.from_numpy(np.require(feed[spec["name"]], requirements="C"))
                                   for spec in self.inputs])
        outputs = [t.numpy() for t in flatten_outputs(result)]
        if not self.outputs:
            self.outputs = [{"name": f"output{i}", "shape": list(o.shape), "dtype": str(o.dtype)}
                            for i, o in enumerate(outputs)]
        return outputs


class LiteRtEngine:
    """A .tflite file on Google's LiteRT interpreter (the TensorFlow Lite runtime)."""

    def __init__(self, model_path: Path, threads: int):
        import importlib.metadata

        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self._inputs = self.interpreter.get_input_details()
        self._outputs = self.interpreter.get_output_details()
        self.inputs = [_litert_spec(d) for d in self._inputs]
        self.outputs = [_litert_spec(d) for d in self._outputs]
        self.version = importlib.metadata.version("ai-edge-litert")

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        resized = False
        for detail in self._inputs:  # a dynamic dim compiled at another size than the file's default
            if list(feed[detail["name"]].shape) != [int(d) for d in detail["shape"]]:
                self.interpreter.resize_tensor_input(detail["index"], list(feed[detail["name"]].shape))
                resized = True
        if resized:
            self.interpreter.allocate_tensors()
            self._inputs = self.interpreter.get_input_details()
            self._outputs = self.interpreter.get_output_details()
        for detail in self._inputs:
            self.interpreter.set_tensor(detail["index"], feed[detail["name"]])
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]).copy() for d in self._outputs]


def _litert_spec(detail: dict) -> dict:
    return {"name": detail["name"], "shape": [int(d) for d in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name}
