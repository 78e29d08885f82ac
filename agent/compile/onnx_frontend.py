"""The ONNX frontend: from a user's .onnx file to a Relax IRModule with static shapes.

    load_model(path)                      parse, bring in external data from the model's folder
    model_inputs(model) / model_outputs   the graph's real inputs (initializers excluded)
    resolve_shapes(inputs, config)        DataInputConfig parsed, or derived when absent
    prepare_graph(model, shapes)          opset into range, freeze dims, infer shapes, fold
                                          shape subgraphs, write out LSTM/GRU/RNN
    import_relax(model, shapes)           tvm.relax.frontend.onnx.from_onnx, errors translated
    load_and_import(path, config)         all of the above -> Imported

Why the preparation: TVM 0.27's Relax frontend rejects graphs whose Reshape targets are
computed at run time from Shape/Gather/Concat (PP-OCR, YOLOv8 exports), and MetaSchedule
needs static shapes anyway. Freezing the input dims and letting onnxslim fold the shape
arithmetic into constants turns those graphs into ones the frontend accepts.

Opsets: the frontend's converters are written for the default-domain opsets 13 to 23
(MIN_OPSET, MAX_OPSET). Below 13, ops it reads in their opset-13 form (Slice's starts as
attributes at opset 9, Upsample, ...) fail to import or import wrongly, so an older model is
first converted to opset 13 by onnx.version_converter; a model above 23 is converted down to 23,
so no converter meets an opset it predates. A model that cannot be converted is refused with
the opsets named; nothing is imported at an opset the frontend was not written for. The
job's metadata keeps the model's own opset.

LSTM, GRU and RNN, which the frontend lacks, are written out step by step over their static
sequence length once the shapes are folded (agent.compile.onnx_recurrent, which says what it
implements and refuses).

A model comes from a user, so before anything is allocated for it: external data must stay in
the model's folder (and within its files), the graph must be acyclic and wired, and no tensor it
declares (initializers, constants) or that its shapes imply for the requested inputs may pass
datainput.MAX_ELEMENTS_PER_TENSOR elements.

This module owns the onnx, onnxslim and TVM-frontend errors; everything leaves as a
ClientError with Neo's keywords:
    corrupt or unreadable file            InputConfiguration: Incompatible ONNX model: ...
    a cycle, an oversized tensor          InputConfiguration: Incompatible ONNX model: ... (names it)
    bad shapes, failed shape folding      InputConfiguration: ...
    an opset onnx cannot convert          InputConfiguration: the model's opset N is outside ...
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
import math
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from agent.compile import datainput, onnx_recurrent, operator_error, summarize_error
from agent.compile.datainput import TensorSpec
from agent.errors import ClientError

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import tvm

log = logging.getLogger(__name__)

KEYWORD = "InputConfiguration"
FRONTEND = "TVM 0.27's ONNX frontend"
# The default-domain opsets that frontend is written for: 13 is the oldest its converters
# implement for 30-odd ops (Slice, Reshape, Gather, Concat, the reductions, ...), 23 the newest
# any of them implements. A model outside is converted to the nearer end.
MIN_OPSET = 13
MAX_OPSET = 23


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
    check_declared_sizes(model.graph)
    check_references(model.graph)
    check_acyclic(model.graph)
    base = path.parent.resolve()
    external = [t for t in _all_tensors(model.graph) if external_data_helper.uses_external_data(t)]
    for tensor in external:
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(base):
            raise ClientError(KEYWORD, f"Incompatible ONNX model: tensor {tensor.name!r} keeps its data in "
                                       f"{location!r}, outside the model's folder")
        if not target.is_file():
            raise ClientError(KEYWORD, f"Incompatible ONNX model: tensor {tensor.name!r} keeps its data in "
                                       f"{location!r}, which the archive does not contain")
        _check_external_range(tensor.name, location, entries, target.stat().st_size)
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, str(base))
        except Exception as exc:
            raise ClientError(KEYWORD, f"Incompatible ONNX model: cannot read external data: {summarize_error(exc)}") from exc
    return model


def _check_external_range(name: str, location: str, entries: dict[str, str], file_size: int) -> None:
    """The bytes a tensor names must lie in its file: onnx would otherwise allocate whatever
    `length` says before finding the file shorter."""
    try:
        offset, length = int(entries.get("offset") or 0), int(entries.get("length") or 0)
    except ValueError:
        raise ClientError(KEYWORD, f"Incompatible ONNX model: tensor {name!r} has an external data offset or "
                                   f"length that is not a number") from None
    if offset < 0 or length < 0 or offset + length > file_size:
        raise ClientError(KEYWORD, f"Incompatible ONNX model: tensor {name!r} keeps its data at bytes "
                                   f"{offset}..{offset + length} of {location!r}, which has {file_size}")


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


def _too_many(what: str, dims: list[int]) -> ClientError | None:
    elements = math.prod(dims)
    if elements <= datainput.MAX_ELEMENTS_PER_TENSOR:
        return None
    return ClientError(KEYWORD, f"Incompatible ONNX model: {what} has shape {dims}, {elements} elements, more than "
                                f"the {datainput.MAX_ELEMENTS_PER_TENSOR} allowed per tensor")


def check_declared_sizes(graph: Any) -> None:
    """Every initializer and constant by its dims alone, before its data is read or allocated."""
    for tensor in _all_tensors(graph):
        dims = [int(d) for d in tensor.dims]
        what = f"tensor {tensor.name!r}" if tensor.name else "a constant tensor"
        if any(d < 0 for d in dims):
            raise ClientError(KEYWORD, f"Incompatible ONNX model: {what} has a negative dim in {dims}")
        failure = _too_many(what, dims)
        if failure:
            raise failure


def check_inferred_sizes(model: "onnx.ModelProto") -> None:
    """Every tensor whose shape inference worked out in full, for the requested input shapes."""
    for value in [*model.graph.value_info, *model.graph.output]:
        if value.type.WhichOneof("value") != "tensor_type" or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            failure = _too_many(f"tensor {value.name!r} (for these input shapes)", [int(d.dim_value) for d in dims])
            if failure:
                raise failure


def check_references(graph: Any) -> None:
    """Every tensor a top-level node reads is made by something: an input, an initializer or a
    node (onnx.checker's rule; TVM would fail on it with only the tensor's name)."""
    known = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    known |= {t.values.name for t in graph.sparse_initializer}
    known |= {name for node in graph.node for name in node.output}
    for node in graph.node:
        for name in node.input:
            if name and name not in known:
                label = node.name or (node.output[0] if node.output else "")
                raise ClientError(KEYWORD, f"Incompatible ONNX model: node {node.op_type} {label!r} reads tensor "
                                           f"{name!r}, which no input, initializer or node makes")


def check_acyclic(graph: Any) -> None:
    """An ONNX graph is acyclic; a cycle would otherwise end in a RecursionError deep in shape
    inference, naming nothing. Kahn's algorithm over the top-level nodes; the error names a cycle."""
    nodes = list(graph.node)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    waiting = [{producer[name] for name in node.input if name in producer} for node in nodes]
    users: dict[int, list[int]] = {}
    for index, needs in enumerate(waiting):
        for need in needs:
            users.setdefault(need, []).append(index)
    ready = [index for index, needs in enumerate(waiting) if not needs]
    done = 0
    while ready:
        finished = ready.pop()
        done += 1
        for user in users.get(finished, ()):
            waiting[user].discard(finished)
            if not waiting[user]:
                ready.append(user)
    if done == len(nodes):
        return
    # Every node still waiting waits on another such node: walking those edges must come round.
    index = next(i for i, needs in enumerate(waiting) if needs)
    path: dict[int, int] = {}  # node -> its place on the walk
    while index not in path:
        path[index] = len(path)
        index = min(waiting[index])
    cycle = list(path)[path[index]:] + [index]
    names = " -> ".join(f"{nodes[i].op_type} {nodes[i].name or nodes[i].output[0]!r}" for i in reversed(cycle))
    raise ClientError(KEYWORD, f"Incompatible ONNX model: the graph has a cycle: {names}")


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


def convert_opset(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """The model itself when its opset is one the frontend is written for, else the model
    converted by onnx.version_converter to the nearest such opset (see module doc)."""
    from onnx import version_converter

    opset = opset_version(model)
    if not opset:
        raise ClientError(KEYWORD, "Incompatible ONNX model: it imports no version of the default (ai.onnx) "
                                   "operator set")
    if MIN_OPSET <= opset <= MAX_OPSET:
        return model
    wanted = MIN_OPSET if opset < MIN_OPSET else MAX_OPSET
    try:
        converted = version_converter.convert_version(model, wanted)
    except MemoryError:
        raise
    except Exception as exc:
        # onnx says why after its C++ assertion: "...convert.h:96: ...: Assertion `...` failed: <why>"
        why = summarize_error(exc).rsplit(" failed: ", 1)[-1]
        raise ClientError(KEYWORD, f"the model's opset {opset} is outside the opsets {MIN_OPSET}-{MAX_OPSET} "
                                   f"{FRONTEND} is written for, and onnx could not convert it to opset {wanted}: "
                                   f"{why}") from exc
    log.info("converted the model from opset %d to %d for %s", opset, wanted, FRONTEND)
    return converted


def prepare_graph(model: "onnx.ModelProto", shapes: dict[str, list[int]]) -> "onnx.ModelProto":
    """Bring the opset into range, freeze the input dims, fold the shape subgraphs into
    constants, then write out LSTM/GRU/RNN step by step (see module doc)."""
    import onnx
    import onnxslim

    model = convert_opset(model)
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
    # A scalar input (dims []) is frozen above already; onnxslim cannot parse "name:".
    spec = [f"{name}:{','.join(str(d) for d in dims)}" for name, dims in shapes.items() if dims]
    try:
        prepared = onnxslim.slim(model, input_shapes=spec)
    except MemoryError:
        raise
    except Exception as exc:
        raise ClientError(KEYWORD, f"the model's shapes could not be worked out for the input shapes "
                                   f"{datainput.to_json(shapes)}: {summarize_error(exc)}") from exc
    check_inferred_sizes(prepared)
    unrolled = onnx_recurrent.unroll(prepared)
    if unrolled:
        log.info("wrote out %d recurrent node(s) step by step", unrolled)
    return prepared


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
    except (tvm.error.OpAttributeUnImplemented, tvm.error.OpAttributeRequired, tvm.error.OpAttributeInvalid) as exc:
        raise operator_error(exc, FRONTEND) from exc
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
            f"(for example unroll Loop/Scan at export)")


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
