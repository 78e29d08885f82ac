"""The PyTorch frontend: a TorchScript file or a torch.export ExportedProgram -> Relax.

    load_runnable(path) -> (module, input names)     what the "torch" reference engine runs
    model_inputs(model) -> [TensorSpec]              the forward's tensor arguments
    resolve_shapes(inputs, config, kind)             DataInputConfig read in Neo's PyTorch forms
    load_and_import(path, config, framework_version) -> Imported   (onnx_frontend's shape)

Two kinds of file, told apart by suffix:
  .pt / .pth   TorchScript (torch.jit.trace or torch.jit.script, then .save): Neo's form. It
               carries no input shapes, so DataInputConfig is required, and no dtypes: its
               inputs are float32 (Neo's default); submit a .pt2 for a model with integer inputs.
  .pt2         a torch.export ExportedProgram (torch.export.save): carries names, shapes and
               dtypes, so DataInputConfig may be left out (a dynamic leading dim becomes 1,
               as for ONNX) or fix the dynamic dims.

TVM 0.27 has no TorchScript frontend, only tvm.relax.frontend.torch.from_exported_program.
A TorchScript module becomes an ExportedProgram through torch's own converter,
torch._export.converter.TS2EPConverter (the path torch.export names when it is handed a
ScriptModule: "Exporting a ScriptModule is not supported. Maybe try converting your
ScriptModule to an ExportedProgram using TS2EPConverter"). The converter makes dims dynamic,
so the result is exported once more with the requested shapes: static shapes are what the
compile needs. The other offline path, torch.onnx.export(..., dynamo=False) into the ONNX
frontend, is TorchScript's legacy exporter, deprecated in torch 2.x; it was not taken.
Measured with torch 2.13 on small conv, MLP and attention modules, traced and scripted: both
paths compile and match torch; neither takes nn.TransformerEncoderLayer (its fast-path
branches: prim::If in the converter, div.Scalar_mode in TVM).

DataInputConfig, Neo's two PyTorch forms:
  {"x": [1, 3, 224, 224]}      by the forward's argument names; or, when no key is an
                               argument name (Neo's examples say "input0", "input1"), the
                               keys are labels and the shapes go to the arguments in order
  [[1, 3, 224, 224], [...]]    the forward's arguments in order
The compiled model's inputs take the forward's argument names; its outputs are output0,
output1, ... (the forward's result flattened: tensors, tuples and lists of them).

Loading a model is running its file's loader in the compile child, so what the loaders may do
is bounded: torch.jit.load runs TorchScript, not Python. A .pt2's weights and constants are
read with torch.load, which by default (weights_only=False in torch.export.load) would unpickle
anything: they are loaded with TORCH_FORCE_WEIGHTS_ONLY_LOAD set, and an archive holding an
opaque pickled object (which torch.export.load hands to pickle.loads) is refused unread.

Errors leave as ClientError with Neo's keywords, as in onnx_frontend:
    not TorchScript / not an ExportedProgram, pickled objects   InputConfiguration: Incompatible PyTorch model: ...
    DataInputConfig missing, unmatched or wrong                 InputConfiguration: ...
    the converter or re-export fails                            InputConfiguration: ... (torch's line)
    an ATen operator TVM lacks                                  OperatorNotImplemented: ...
torch and TVM are imported inside functions, as everywhere in agent.compile.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from agent.compile import datainput, summarize_error
from agent.compile.datainput import TensorSpec
from agent.errors import ClientError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    import tvm

log = logging.getLogger(__name__)

KEYWORD = "InputConfiguration"
FRONTEND = "TVM 0.27's PyTorch frontend (from_exported_program)"
EXPORTED_SUFFIX = ".pt2"
SCRIPT_DTYPE = "float32"
EXAMPLE_SEED = 0
# torch.export.load hands files under data/constants/ with this prefix to pickle.loads.
OPAQUE_PREFIX = "opaque_obj_"


def is_exported(path: Path) -> bool:
    return Path(path).name.lower().endswith(EXPORTED_SUFFIX)


@contextlib.contextmanager
def _weights_only() -> Iterator[None]:
    """torch.load refuses to unpickle anything but tensors and plain containers meanwhile."""
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def _incompatible(path: Path, detail: str) -> ClientError:
    return ClientError(KEYWORD, f"Incompatible PyTorch model: {Path(path).name} {detail}")


def load_model(path: Path) -> Any:
    """A ScriptModule (.pt/.pth) or an ExportedProgram (.pt2), with torch's errors translated."""
    import torch

    path = Path(path)
    if is_exported(path):
        _check_archive(path)
        try:
            with _weights_only():
                return torch.export.load(str(path))
        except MemoryError:
            raise
        except Exception as exc:
            raise _incompatible(path, f"is not a torch.export ExportedProgram that torch {torch.__version__} "
                                      f"can load: {summarize_error(exc)}") from exc
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except MemoryError:
        raise
    except Exception as exc:
        raise _incompatible(path, f"is not a TorchScript archive ({summarize_error(exc)}); save the model with "
                                  "torch.jit.trace(model, example).save(path) or torch.jit.script(model).save(path), "
                                  "or export it with torch.export and submit the .pt2") from exc
    module.eval()  # inference: dropout off, batch norm on its running statistics
    return module


def _check_archive(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise _incompatible(path, f"is not a torch.export archive (not a zip file: {exc})") from exc
    pickled = [n for n in names if "/constants/" in n and n.rsplit("/", 1)[-1].startswith(OPAQUE_PREFIX)]
    if pickled:
        raise _incompatible(path, f"holds pickled Python objects ({pickled[0]}), which this device does not load; "
                                  "export the model with tensor constants only")


def model_inputs(model: Any) -> list[TensorSpec]:
    """The forward's tensor arguments: names, and for an ExportedProgram shapes and dtypes
    (a dynamic dim is a string, its symbol). A TorchScript argument's shape is ()."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        placeholders = {node.name: node for node in model.graph.nodes if node.op == "placeholder"}
        specs = []
        for spec in model.graph_signature.input_specs:
            if spec.kind != torch.export.graph_signature.InputKind.USER_INPUT:
                continue
            node = placeholders.get(getattr(spec.arg, "name", ""))
            value = node.meta.get("val") if node is not None else None
            if not isinstance(value, torch.Tensor):
                raise ClientError(KEYWORD, f"Incompatible PyTorch model: input {getattr(spec.arg, 'name', spec.arg)!r} "
                                           "is not a tensor; only tensor inputs can be compiled")
            shape = tuple(int(d) if isinstance(d, int) else str(d) for d in value.shape)
            specs.append(TensorSpec(spec.arg.name, shape, str(value.dtype).removeprefix("torch.")))
        if not specs:
            raise ClientError(KEYWORD, "Incompatible PyTorch model: the ExportedProgram takes no tensor inputs")
        return specs
    arguments = list(model.forward.schema.arguments)[1:]  # [0] is self
    specs = []
    for argument in arguments:
        if argument.default_value is not None:
            continue  # left at its default
        if str(argument.type) != "Tensor":
            raise ClientError(KEYWORD, f"Incompatible PyTorch model: forward's argument {argument.name!r} is a "
                                       f"{argument.type}, not a Tensor; only tensor inputs can be compiled, since "
                                       "DataInputConfig gives tensor shapes only. Fix its value in the model: "
                                       "script a wrapper whose forward calls this one with "
                                       f"{argument.name!r} set, and save that")
        specs.append(TensorSpec(argument.name, (), SCRIPT_DTYPE))
    if not specs:
        raise ClientError(KEYWORD, "Incompatible PyTorch model: the TorchScript forward takes no tensor arguments")
    return specs


def resolve_shapes(inputs: list[TensorSpec], data_input_config: str | None,
                   *, exported: bool) -> tuple[dict[str, list[int]], str | None]:
    """(shapes, derived config) for Neo's PyTorch forms (see the module docstring)."""
    if not (data_input_config and data_input_config.strip()):
        if not exported:
            example = datainput.to_json({spec.name: [1, 3, 224, 224] for spec in inputs})
            raise ClientError(KEYWORD, f"DataInputConfig is required for a TorchScript model, which carries no input "
                                       f"shapes; its forward takes {', '.join(s.name for s in inputs)}: give e.g. "
                                       f"{example} or [[1, 3, 224, 224]]")
        shapes = datainput.derive(inputs)
        return shapes, datainput.to_json(shapes)
    text = _positional_if_labels(data_input_config, inputs)
    if exported:
        return datainput.parse(text, inputs), None
    raw = json.loads(text)
    given = datainput._as_mapping(raw, inputs)
    unknown = [name for name in given if name not in {s.name for s in inputs}]
    if unknown:
        raise ClientError(KEYWORD, f"DataInputConfig names input {unknown[0]!r}, which the model does not have; "
                                   f"the forward's tensor arguments are: {', '.join(s.name for s in inputs)}")
    shapes = {}
    for spec in inputs:
        if spec.name not in given:
            raise ClientError(KEYWORD, f"DataInputConfig does not give the shape of input {spec.name!r}; a TorchScript "
                                       f"model carries no shapes, so every input needs one")
        shape = given[spec.name]
        rank = len(shape) if isinstance(shape, list) else 0
        shapes[spec.name] = datainput.check_shape(TensorSpec(spec.name, ("?",) * rank, spec.dtype), shape)
    return datainput.check_total(shapes), None


def _positional_if_labels(text: str, inputs: Sequence[TensorSpec]) -> str:
    """Neo's PyTorch dict form labels the shapes ("input0", ...) rather than naming arguments:
    a dict none of whose keys is an argument name is read as the list of its shapes."""
    try:
        raw = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return text  # datainput.parse reports it
    names = {spec.name for spec in inputs}
    if isinstance(raw, dict) and raw and not names & set(raw):
        if len(raw) != len(inputs):
            raise ClientError(KEYWORD, f"DataInputConfig gives {len(raw)} shapes ({', '.join(raw)}) but the forward "
                                       f"takes {len(inputs)} tensors: {', '.join(s.name for s in inputs)}")
        return json.dumps(list(raw.values()))
    return text


def example_args(inputs: list[TensorSpec], shapes: dict[str, list[int]]) -> tuple:
    """Seeded inputs of the requested shapes (floats in [0, 1), integers in [0, 10))."""
    import numpy as np
    import torch

    from agent.bench.inputs import make_inputs

    arrays = make_inputs([{"name": s.name, "shape": shapes[s.name], "dtype": s.dtype} for s in inputs],
                         seed=EXAMPLE_SEED)
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays.values())


def to_static_program(model: Any, args: tuple) -> Any:
    """An ExportedProgram with every dim fixed to `args`' shapes: TorchScript through torch's
    converter, then (for both kinds) torch.export.export of the program's module when a dim
    is still symbolic."""
    import torch

    scripted = not isinstance(model, torch.export.ExportedProgram)
    try:
        if scripted:
            from torch._export.converter import TS2EPConverter

            model = TS2EPConverter(model, args).convert()
        if all(isinstance(d, int) for node in model.graph.nodes if node.op == "placeholder"
               for d in getattr(node.meta.get("val"), "shape", ())):
            return model
        return torch.export.export(model.module(), args)
    except (MemoryError, ClientError):
        raise
    except Exception as exc:
        hint = ""
        if scripted and any(node in str(exc) for node in ("prim::If", "prim::Loop")):
            hint = (". TorchScript whose control flow depends on its inputs or on state the module keeps "
                    "(a streaming model's) does not convert: submit the model as a .pt2 from torch.export, "
                    "or exported to ONNX with Framework ONNX")
        raise ClientError(KEYWORD, f"PyTorch could not turn the model into a static-shape ExportedProgram for the "
                                   f"input shapes {[list(a.shape) for a in args]}: {summarize_error(exc)}{hint}") from exc


_UNSUPPORTED = re.compile(r"Unsupported function types? \[(.*)\]")


def import_relax(program: Any) -> "tvm.IRModule":
    """from_exported_program with the weights bound as constants, its errors translated."""
    import tvm
    from tvm.relax.frontend.torch import from_exported_program

    try:
        return from_exported_program(program, keep_params_as_input=False)
    except tvm.error.OpNotImplemented as exc:
        raise ClientError("OperatorNotImplemented", f"{summarize_error(exc)} ({FRONTEND})") from exc
    except MemoryError:
        raise
    except Exception as exc:
        missing = _UNSUPPORTED.search(str(exc))
        if missing:
            ops = missing.group(1).replace("'", "")
            verb = "is" if "," not in ops else "are"
            raise ClientError("OperatorNotImplemented", f"{ops} {verb} not supported by {FRONTEND}") from exc
        raise ClientError(KEYWORD, f"{FRONTEND} could not import the model: {summarize_error(exc)}") from exc


def flatten_outputs(result: Any) -> list[Any]:
    """A forward's result as a flat list of tensors (tuples and lists opened, in order)."""
    if isinstance(result, (tuple, list)):
        return [t for item in result for t in flatten_outputs(item)]
    if isinstance(result, dict):
        return [t for item in result.values() for t in flatten_outputs(item)]
    return [result]


def load_runnable(path: Path) -> tuple[Any, list[str]]:
    """The model as torch runs it (a ScriptModule, or the ExportedProgram's module) and the
    names of its tensor inputs in order: the reference engine's view."""
    model = load_model(path)
    names = [spec.name for spec in model_inputs(model)]
    return (model.module() if is_exported(path) else model), names


def load_and_import(path: Path, data_input_config: str | None, framework_version: str | None = None):
    """The prepare stage: load, resolve shapes, make a static ExportedProgram, import.
    `framework_version` was checked at CreateCompilationJob (agent.compile.frontends)."""
    from agent.compile.onnx_frontend import Imported, output_specs

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    model = load_model(path)
    inputs = model_inputs(model)
    shapes, derived = resolve_shapes(inputs, data_input_config, exported=is_exported(path))
    seconds["load"] = time.perf_counter() - start

    start = time.perf_counter()
    program = to_static_program(model, example_args(inputs, shapes))
    seconds["convert"] = time.perf_counter() - start

    start = time.perf_counter()
    mod = import_relax(program)
    seconds["import"] = time.perf_counter() - start

    static_inputs = [TensorSpec(s.name, tuple(shapes[s.name]), s.dtype) for s in inputs]
    outputs = output_specs(mod, [])
    outputs = [TensorSpec(f"output{i}", o.shape, o.dtype) for i, o in enumerate(outputs)]
    return Imported(mod=mod, inputs=static_inputs, outputs=outputs, shapes=shapes, derived_config=derived,
                    opset=0, seconds=seconds)
