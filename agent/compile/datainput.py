"""Neo's DataInputConfig for ONNX: reading it, checking it against the model, deriving it.

Neo documents the ONNX form as a JSON object of input name to NCHW shape, in order:
`{"data": [1, 3, 224, 224]}`. Like Neo's PyTorch form, a list of shapes matched to the
graph inputs in order is accepted too (`[[1, 3, 224, 224]]`), and for a one-input model a
bare shape (`[1, 3, 224, 224]`).

When the request has no DataInputConfig the shapes are derived from the model: fixed dims
are kept and a dynamic first dim (the batch) becomes 1. Any other dynamic dim cannot be
guessed, so the user is asked for a DataInputConfig. Neo reports what it derived as
DerivedInformation.DerivedDataInputConfig; `to_json` writes that string.

Every problem is a ClientError("InputConfiguration", ...) that names the input and says what
is wrong, because the user fixes it by editing their request. Pure Python: no onnx, no TVM.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

from agent.errors import ClientError

# A tensor bigger than this is a typo or an attack, not a model (2**31 elements is 8 GiB of
# float32), and it would only fail later with a far less helpful memory error. The bound holds
# for each input, for all inputs together, and (agent.compile.onnx_frontend) for every tensor
# the model declares or its shapes imply.
MAX_ELEMENTS_PER_TENSOR = 2**31
MAX_ELEMENTS_PER_INPUT = MAX_ELEMENTS_PER_TENSOR
MAX_ELEMENTS_ALL_INPUTS = 2**31
KEYWORD = "InputConfiguration"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One model input or output.

    `shape` holds ints for known dims and strings for dynamic ones (the ONNX dim_param, or
    "?" when the model gives no name), so messages can show the model's own words.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(str(data["name"]), tuple(data["shape"]), str(data["dtype"]))


def _fail(detail: str) -> ClientError:
    return ClientError(KEYWORD, detail)


def _names(inputs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{i.name} {list(i.shape)}" for i in inputs)


def parse(text: str, inputs: Sequence[TensorSpec]) -> dict[str, list[int]]:
    """The shapes a DataInputConfig asks for, checked against the model's inputs.

    Returns name -> shape in the model's input order. An input the config leaves out is
    derived when its shape needs no guess (see `derive_one`), so a config may name only the
    inputs with dynamic dims.
    """
    try:
        raw = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _fail(f"DataInputConfig is not valid JSON ({exc}); expected e.g. "
                    f'{{"{inputs[0].name if inputs else "input"}": [1, 3, 224, 224]}}') from None
    given = _as_mapping(raw, inputs)
    by_name = {spec.name: spec for spec in inputs}
    unknown = [name for name in given if name not in by_name]
    if unknown:
        raise _fail(f"DataInputConfig names input {unknown[0]!r}, which the model does not have; "
                    f"the model's inputs are: {_names(inputs)}")
    shapes: dict[str, list[int]] = {}
    for spec in inputs:
        if spec.name in given:
            shapes[spec.name] = check_shape(spec, given[spec.name])
        else:
            shapes[spec.name] = derive_one(spec, missing=True)
    return check_total(shapes)


def oversized(shapes: dict[Any, list[int]]) -> str | None:
    """Why these input shapes are too large to compile, or None. Pure arithmetic on the dims,
    so the API can refuse a DataInputConfig asking for terabytes before a job exists."""
    total = 0
    for name, shape in shapes.items():
        elements = math.prod(shape)
        if elements > MAX_ELEMENTS_PER_INPUT:
            return (f"input {name!r} shape {shape} has {elements} elements, more than the "
                    f"{MAX_ELEMENTS_PER_INPUT} allowed per input")
        total += elements
    if total > MAX_ELEMENTS_ALL_INPUTS:
        return (f"the inputs have {total} elements together, more than the {MAX_ELEMENTS_ALL_INPUTS} "
                f"allowed for all inputs of a model")
    return None


def check_total(shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """`shapes`, or a ClientError when they are too large together (see `oversized`)."""
    problem = oversized(shapes)
    if problem:
        raise _fail(problem)
    return shapes


def _as_mapping(raw: Any, inputs: Sequence[TensorSpec]) -> dict[str, Any]:
    """Turn the accepted forms (dict, list of shapes, one bare shape) into name -> shape."""
    if isinstance(raw, dict):
        if not raw:
            raise _fail("DataInputConfig is empty; give each input's shape, e.g. "
                        f"{to_json({i.name: [1, 3, 224, 224] for i in inputs[:1]})}")
        return raw
    if isinstance(raw, list) and raw and all(_is_int(d) for d in raw):
        if len(inputs) != 1:
            raise _fail(f"DataInputConfig is a single shape but the model has {len(inputs)} inputs "
                        f"({_names(inputs)}); give a JSON object of input name to shape")
        return {inputs[0].name: raw}
    if isinstance(raw, list) and raw and all(isinstance(s, list) for s in raw):
        if len(raw) != len(inputs):
            raise _fail(f"DataInputConfig lists {len(raw)} shapes but the model has {len(inputs)} "
                        f"inputs: {_names(inputs)}")
        return {spec.name: shape for spec, shape in zip(inputs, raw)}
    raise _fail(f"DataInputConfig must be a JSON object of input name to shape, e.g. "
                f'{{"input": [1, 3, 224, 224]}}, or a list of shapes; got {json.dumps(raw)[:100]}')


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_shape(spec: TensorSpec, shape: Any) -> list[int]:
    """One requested shape, checked against the model's declaration of that input."""
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise _fail(f"the shape for input {spec.name!r} must be a list of integers, got {json.dumps(shape)[:100]}")
    if len(shape) != len(spec.shape):
        raise _fail(f"input {spec.name!r} has rank {len(spec.shape)} in the model {list(spec.shape)}, "
                    f"but DataInputConfig gives {len(shape)} dims {shape}")
    for axis, (want, have) in enumerate(zip(shape, spec.shape)):
        if want <= 0:
            raise _fail(f"input {spec.name!r} axis {axis}: dims must be positive, got {want} in {shape}")
        if isinstance(have, int) and want != have:
            raise _fail(f"input {spec.name!r} axis {axis}: the model fixes this dim to {have} "
                        f"{list(spec.shape)}, but DataInputConfig gives {want} {shape}")
    problem = oversized({spec.name: shape})
    if problem:
        raise _fail(problem)
    return list(shape)


def derive(inputs: Sequence[TensorSpec]) -> dict[str, list[int]]:
    """Shapes for a request without DataInputConfig (see the module docstring)."""
    return check_total({spec.name: derive_one(spec) for spec in inputs})


def derive_one(spec: TensorSpec, *, missing: bool = False) -> list[int]:
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif axis == 0:
            shape.append(1)  # a dynamic leading dim is the batch: compile for one sample
        else:
            where = "DataInputConfig does not give its shape" if missing else "DataInputConfig is absent"
            raise _fail(f"input {spec.name!r} has dynamic axis {axis} ({dim!r}) in {list(spec.shape)} and "
                        f"{where}; give its shape, e.g. "
                        f"{to_json({spec.name: _example(spec)})}")
    return check_shape(spec, shape)


def _example(spec: TensorSpec) -> list[int]:
    """A plausible shape to show in a message: 1 for the batch, 224 for other unknown dims."""
    return [d if isinstance(d, int) and d > 0 else (1 if axis == 0 else 224) for axis, d in enumerate(spec.shape)]


def to_json(shapes: dict[str, list[int]]) -> str:
    """Neo's DataInputConfig text for these shapes (also the DerivedDataInputConfig)."""
    return json.dumps(shapes, separators=(", ", ": "))
