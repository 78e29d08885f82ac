"""The ONNX frontend: from a user's .onnx file to a Relax IRModule with static shapes.

    load_model(path)                      parse, bring in external data from the model's folder
    model_inputs(model) / model_outputs   the graph's real inputs (initializers excluded)
    resolve_shapes(inputs, config)        DataInputConfig parsed, or derived when absent
    prepare_graph(model, shapes)          freeze dims, infer shapes, fold shape subgraphs
    import_relax(model, shapes)           tvm.relax.frontend.onnx.from_onnx, errors translated
    load_and_import(path, config)         all of the above -> Imported

Why the preparation: TVM 0.27's Relax frontend rejects graphs whose Reshape targets are
computed at run time from Shape/Gather/Concat (PP-OCR, YOLOv8 exports), and MetaSchedule
needs static shapes anyway. Freezing the input dims and letting onnxslim fold the shape
arithmetic into constants turns those graphs into ones the frontend accepts.

This module owns the onnx, onnxslim and TVM-frontend errors; everything leaves as a
ClientError with Neo's keywords:
    corrupt or unreadable file            InputConfiguration: Incompatible ONNX model: ...
    bad shapes, failed shape folding      InputConfiguration: ...
    operator TVM lacks                    OperatorNotImplemented: X, Y are not supported ...
    attribute TVM lacks / needs / rejects OperatorAttributeNotImplemented / ...Required / ...ValueNotValid
    anything else the frontend raises     InputConfiguration: <TVM's first useful line>
onnx and TVM are imported inside functions: the agent's main process may import this module
(for its types) and must never load TVM.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from agent.compile import datainput, summarize_error
from agent.compile.datainput import TensorSpec
from agent.errors import ClientError

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import tvm

log = logging.getLogger(__name__)

KEYWORD = "InputConfiguration"
FRONTEND = "TVM 0.27's ONNX frontend"


@dataclasses.dataclass
class Imported:
    """What `load_and_import` hands to the compile stage."""

    mod: "tvm.IRModule"
    inputs: list[TensorSpec]  # with the static shapes compiled for
    outputs: list[TensorSpec]
    shapes: dict[str, list[int]]
    derived_config: str | None  # the DerivedDataInputConfig when the request had none
    opset: int
    seconds: dict[str, float]


def load_model(path: Path) -> "onnx.ModelProto":
    """Parse an .onnx file; external data may only come from files in the model's folder."""
    import onnx
    from onnx import external_data_helper

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except MemoryError:
        raise
    except Exception as exc:  # protobuf DecodeError, OSError, ValueError: all mean "not ONNX"
        raise ClientError(KEYWORD, f"Incompatible ONNX model: cannot parse {path.name}: {summarize_error(exc)}") from exc
    if not model.HasField("graph") or not model.graph.node:
        raise ClientError(KEYWORD, f"Incompatible ONNX model: {path.name} holds no graph")
    base = path.parent.resolve()
    external = [t for t in _all_tensors(model.graph) if external_data_helper.uses_external_data(t)]
    for tensor in external:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(base):
            raise ClientError(KEYWORD, f"Incompatible ONNX model: tensor {tensor.name!r} keeps its data in "
                                       f"{location!r}, outside the model's folder")
        if not target.is_file():
            raise ClientError(KEYWORD, f"Incompatible ONNX model: tensor {tensor.name!r} keeps its data in "
                                       f"{location!r}, which the archive does not contain")
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, str(base))
        except Exception as exc:
            raise ClientError(KEYWORD, f"Incompatible ONNX model: cannot read external data: {summarize_error(exc)}") from exc
    return model


def _all_tensors(graph: Any) -> Iterator[Any]:
    """Initializers and constant attributes, subgraphs included (where external data may hide)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def opset_version(model: "onnx.ModelProto") -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _value_spec(value: Any, role: str) -> TensorSpec:
    from onnx import helper

    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ClientError(KEYWORD, f"{role} {value.name!r} is a {kind}, not a tensor; only tensor inputs and "
                                   f"outputs can be compiled")
    tensor = value.type.tensor_type
    try:
        dtype = str(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except Exception:
        dtype = f"onnx-type-{tensor.elem_type}"
    dims: list[int | str] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:  # -1 (old exporters), 0 or a dim_param: dynamic
            dims.append(dim.dim_param or "?")
    return TensorSpec(value.name, tuple(dims), dtype)


def model_inputs(model: "onnx.ModelProto") -> list[TensorSpec]:
    """The inputs a caller feeds; old exporters also list every initializer as an input."""
    initializers = {t.name for t in model.graph.initializer}
    specs = [_value_spec(v, "input") for v in model.graph.input if v.name not in initializers]
    if not specs:
        raise ClientError(KEYWORD, "Incompatible ONNX model: the graph has no inputs to feed")
    return specs


def model_outputs(model: "onnx.ModelProto") -> list[TensorSpec]:
    return [_value_spec(v, "output") for v in model.graph.output]


def resolve_shapes(inputs: list[TensorSpec], data_input_config: str | None) -> tuple[dict[str, list[int]], str | None]:
    """(shapes, derived config): the user's DataInputConfig checked, or shapes derived."""
    if data_input_config and data_input_config.strip():
        return datainput.parse(data_input_config, inputs), None
    shapes = datainput.derive(inputs)
    return shapes, datainput.to_json(shapes)


def prepare_graph(model: "onnx.ModelProto", shapes: dict[str, list[int]]) -> "onnx.ModelProto":
    """Freeze the input dims, then fold the shape subgraphs into constants (see module doc)."""
    import onnx
    import onnxslim

    for value in model.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for size in shapes[value.name]:
                dims.add().dim_value = size
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # not fatal: onnxslim runs its own inference next
        log.warning("onnx shape inference failed, continuing: %s", summarize_error(exc))
    spec = [f"{name}:{','.join(str(d) for d in dims)}" for name, dims in shapes.items()]
    try:
        return onnxslim.slim(model, input_shapes=spec)
    except MemoryError:
        raise
    except Exception as exc:
        raise ClientError(KEYWORD, f"the model's shapes could not be worked out for the input shapes "
                                   f"{datainput.to_json(shapes)}: {summarize_error(exc)}") from exc


def import_relax(model: "onnx.ModelProto", shapes: dict[str, list[int]],
                 dtypes: dict[str, str] | None = None) -> "tvm.IRModule":
    """Run TVM's ONNX frontend with weights bound as constants, translating its errors.

    The frontend names the operator it failed on only by printing it, so stdout is captured
    and the name is put into the FailureReason.
    """
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            return from_onnx(model, shape_dict=shapes, dtype_dict=dtypes or "float32", keep_params_in_input=False)
    except tvm.error.OpNotImplemented as exc:
        raise ClientError("OperatorNotImplemented", _unsupported_detail(exc)) from exc
    except tvm.error.OpAttributeUnImplemented as exc:
        raise ClientError("OperatorAttributeNotImplemented", f"{summarize_error(exc)} ({FRONTEND})") from exc
    except tvm.error.OpAttributeRequired as exc:
        raise ClientError("OperatorAttributeRequired", f"{summarize_error(exc)} ({FRONTEND})") from exc
    except tvm.error.OpAttributeInvalid as exc:
        raise ClientError("OperatorAttributeValueNotValid", f"{summarize_error(exc)} ({FRONTEND})") from exc
    except MemoryError:
        raise
    except Exception as exc:
        failed = re.search(r"Error converting operator (\S+),", printed.getvalue())
        where = f"could not convert operator {failed.group(1)}" if failed else "could not import the model"
        raise ClientError(KEYWORD, f"{FRONTEND} {where}: {summarize_error(exc)}") from exc
    finally:
        if printed.getvalue().strip():
            log.info("TVM ONNX frontend said: %s", printed.getvalue().strip()[:2000])


def _unsupported_detail(exc: BaseException) -> str:
    text = str(exc)
    marker = "not supported for frontend ONNX:"
    ops = text.split(marker, 1)[1].strip().rstrip(".") if marker in text else summarize_error(exc)
    verb = "is" if "," not in ops else "are"
    return (f"{ops} {verb} not supported by {FRONTEND}; re-export the model without {'it' if verb == 'is' else 'them'} "
            f"(for example unroll RNN/LSTM/GRU/Loop/Scan at export)")


def output_specs(mod: "tvm.IRModule", outputs: list[TensorSpec]) -> list[TensorSpec]:
    """Output shapes and dtypes after import, from the Relax main function's return type.

    Names come from the ONNX graph (Relax does not keep them); a dim TVM leaves symbolic
    stays a string.
    """
    from tvm import relax

    leaves: list[Any] = []

    def flatten(ty: Any) -> None:
        if isinstance(ty, relax.TupleType):
            for field in ty.fields:
                flatten(field)
        else:
            leaves.append(ty)

    flatten(mod["main"].ret_ty)
    specs = []
    for index, ty in enumerate(leaves):
        name = outputs[index].name if index < len(outputs) else f"output{index}"
        shape: tuple[int | str, ...] = ()
        if isinstance(ty, relax.TensorType) and ty.shape is not None and hasattr(ty.shape, "values"):
            shape = tuple(_dim(v) for v in ty.shape.values)
        elif index < len(outputs):
            shape = outputs[index].shape
        dtype = str(ty.dtype) if isinstance(ty, relax.TensorType) and ty.dtype is not None else (
            outputs[index].dtype if index < len(outputs) else "float32")
        specs.append(TensorSpec(name, shape, dtype))
    return specs


def _dim(value: Any) -> int | str:
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


def load_and_import(path: Path, data_input_config: str | None) -> Imported:
    """The prepare stage in one call: load, resolve shapes, prepare, import."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    model = load_model(path)
    inputs = model_inputs(model)
    declared_outputs = model_outputs(model)
    shapes, derived = resolve_shapes(inputs, data_input_config)
    seconds["load"] = time.perf_counter() - start

    start = time.perf_counter()
    prepared = prepare_graph(model, shapes)
    seconds["fold"] = time.perf_counter() - start

    start = time.perf_counter()
    dtypes = {spec.name: spec.dtype for spec in inputs}
    mod = import_relax(prepared, shapes, dtypes)
    seconds["import"] = time.perf_counter() - start

    static_inputs = [TensorSpec(s.name, tuple(shapes[s.name]), s.dtype) for s in inputs]
    return Imported(mod=mod, inputs=static_inputs, outputs=output_specs(mod, declared_outputs), shapes=shapes,
                    derived_config=derived, opset=opset_version(model), seconds=seconds)
