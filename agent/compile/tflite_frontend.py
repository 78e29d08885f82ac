"""The TFLite frontend: a .tflite flatbuffer -> Relax, through tvm.relax.frontend.tflite.

    load_model(path)                       the flatbuffer, checked, parsed by the `tflite` package
    model_inputs(model) / model_outputs    the first subgraph's tensors: names, shapes, dtypes
    load_and_import(path, config, framework_version) -> Imported   (onnx_frontend's shape)

DataInputConfig is Neo's TFLite form, a JSON object of input name to shape in the model's own
layout (NHWC for images), e.g. {"input": [1, 224, 224, 3]}; a list of shapes in input order
and a bare shape for a one-input model are accepted too, as for ONNX. Absent, the shapes are
the model's (a dynamic leading dim, -1 in its shape signature, becomes 1).

Float and integer-quantized models both import: TVM 0.27 lowers a quantized CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, ... (int8 or uint8 with their scales and zero points)
to integer arithmetic, and the verification against LiteRT (the "litert" engine) compares the
integer outputs as they are. What the frontend refuses it names: operators it lacks, and
quantized ones it has no lowering for (streaming models' READ_VARIABLE / ASSIGN_VARIABLE,
for one), come out as OperatorNotImplemented with TVM's list.

Only the first subgraph is the model (further ones are bodies of control-flow operators), as
TVM reads it. Before anything is allocated every tensor the model declares is held to
datainput.MAX_ELEMENTS_PER_TENSOR elements, as for ONNX.

Errors, with Neo's keywords:
    not a TFLite flatbuffer, oversized tensor    InputConfiguration: Incompatible TFLite model: ...
    DataInputConfig                             InputConfiguration: ... (agent.compile.datainput)
    operators TVM lacks or cannot lower         OperatorNotImplemented: ...
    anything else the frontend raises           InputConfiguration: <TVM's first useful line>
tflite and TVM are imported inside functions, as everywhere in agent.compile.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.compile import datainput, operator_error, summarize_error
from agent.compile.datainput import TensorSpec
from agent.errors import ClientError

if TYPE_CHECKING:  # pragma: no cover
    import tvm

log = logging.getLogger(__name__)

KEYWORD = "InputConfiguration"
FRONTEND = "TVM 0.27's TFLite frontend"
IDENTIFIER = b"TFL3"
# tflite.TensorType values -> numpy dtype names (the LiteRT engine reports the same names).
DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8",
          10: "float64", 12: "uint64", 15: "uint32", 16: "uint16"}


def _incompatible(detail: str) -> ClientError:
    return ClientError(KEYWORD, f"Incompatible TFLite model: {detail}")


def load_model(path: Path) -> Any:
    """The parsed model; the file must be a TFLite flatbuffer with a subgraph to compile."""
    import tflite

    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise _incompatible(f"{path.name} is not a TensorFlow Lite flatbuffer (no {IDENTIFIER.decode()} identifier)")
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() < 1:
            raise _incompatible(f"{path.name} holds no subgraph")
        check_declared_sizes(model)
    except ClientError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # a flatbuffer with offsets out of range fails in struct.unpack & co.
        raise _incompatible(f"cannot parse {path.name}: {summarize_error(exc)}") from exc
    return model


def check_declared_sizes(model: Any) -> None:
    """Every tensor of every subgraph by its shape alone, before the frontend reads its data."""
    for index in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(index)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            dims = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
            if math.prod(abs(d) for d in dims) > datainput.MAX_ELEMENTS_PER_TENSOR:
                raise _incompatible(f"tensor {_name(tensor)!r} has shape {dims}, more than the "
                                    f"{datainput.MAX_ELEMENTS_PER_TENSOR} elements allowed per tensor")


def _name(tensor: Any) -> str:
    name = tensor.Name()
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _spec(subgraph: Any, index: int, role: str) -> TensorSpec:
    tensor = subgraph.Tensors(int(index))
    dtype = DTYPES.get(tensor.Type())
    if dtype is None:
        raise _incompatible(f"{role} {_name(tensor)!r} has TFLite tensor type {tensor.Type()}, which cannot be "
                            "compiled (only numeric tensors)")
    shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
    signature = [int(d) for d in tensor.ShapeSignatureAsNumpy()] if tensor.ShapeSignatureLength() else shape
    dims: tuple[int | str, ...] = tuple(d if d > 0 else "?" for d in signature)
    return TensorSpec(_name(tensor), dims, dtype)


def model_inputs(model: Any) -> list[TensorSpec]:
    subgraph = model.Subgraphs(0)
    specs = [_spec(subgraph, i, "input") for i in subgraph.InputsAsNumpy()] if subgraph.InputsLength() else []
    if not specs:
        raise _incompatible("the model's first subgraph has no inputs to feed")
    return specs


def model_outputs(model: Any) -> list[TensorSpec]:
    subgraph = model.Subgraphs(0)
    return [_spec(subgraph, i, "output") for i in subgraph.OutputsAsNumpy()] if subgraph.OutputsLength() else []


def import_relax(model: Any, shapes: dict[str, list[int]], dtypes: dict[str, str]) -> "tvm.IRModule":
    """from_tflite, with what it prints kept for the log and its errors translated."""
    import tvm
    from tvm.relax.frontend.tflite import from_tflite

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            return from_tflite(model, shape_dict={k: tuple(v) for k, v in shapes.items()}, dtype_dict=dtypes)
    except tvm.error.OpNotImplemented as exc:
        detail = " ".join(str(exc).split())
        raise ClientError("OperatorNotImplemented", f"{detail[:700]} ({FRONTEND})") from exc
    except (tvm.error.OpAttributeUnImplemented, tvm.error.OpAttributeRequired, tvm.error.OpAttributeInvalid) as exc:
        raise operator_error(exc, FRONTEND) from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise ClientError(KEYWORD, f"{FRONTEND} could not import the model: {summarize_error(exc)}") from exc
    finally:
        if printed.getvalue().strip():
            log.info("TVM TFLite frontend said: %s", printed.getvalue().strip()[:2000])


def load_and_import(path: Path, data_input_config: str | None, framework_version: str | None = None):
    """The prepare stage: parse, resolve shapes, import. `framework_version` was checked at
    CreateCompilationJob (agent.compile.frontends)."""
    from agent.compile.onnx_frontend import Imported, output_specs

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    model = load_model(path)
    inputs = model_inputs(model)
    declared_outputs = model_outputs(model)
    if data_input_config and data_input_config.strip():
        shapes, derived = datainput.parse(data_input_config, inputs), None
    else:
        shapes = datainput.derive(inputs)
        derived = datainput.to_json(shapes)
    seconds["load"] = time.perf_counter() - start

    start = time.perf_counter()
    mod = import_relax(model, shapes, {s.name: s.dtype for s in inputs})
    seconds["import"] = time.perf_counter() - start

    static_inputs = [TensorSpec(s.name, tuple(shapes[s.name]), s.dtype) for s in inputs]
    return Imported(mod=mod, inputs=static_inputs, outputs=output_specs(mod, declared_outputs), shapes=shapes,
                    derived_config=derived, opset=0, seconds=seconds)
