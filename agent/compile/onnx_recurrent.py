"""LSTM, GRU and RNN for TVM 0.27's ONNX frontend, which has no converter for them.

    unroll(model) -> count      each LSTM/GRU/RNN node (If branches included) replaced, in
                                place, by the same recurrence written out step by step in
                                plain ONNX ops

Why a graph rewrite and not a converter: `from_onnx` takes no custom converters (its map is a
module-level function and it refuses unknown ops before converting anything), and by the time
this runs the input shapes are frozen and folded, so every sequence length is a number.
Written out, the recurrence is what the rest of the compiler already handles well: one MatMul
projects the whole input sequence for every gate and direction at once (X·Wᵀ + Wb + Rb), then
each step is one small MatMul by Rᵀ, a Split into gates and the gates' elementwise arithmetic,
which FuseOps fuses. Steps of one shape share their kernels, so a long sequence costs graph
nodes rather than kernels; the steps are cut apart and Y put together by trees of 8-way
Split/Concat (one S-way split is one kernel whose code grows with S). Measured on this 2-core
VM, a bidirectional LSTM of hidden size 128 compiles in 31 s at 100 steps and 57 s at 200 (1.2
GB peak), most of it in the one kernel FuseOps makes of the Concats that assemble Y.

ONNX semantics (opset 7 to 22): directions forward, reverse and bidirectional; initial_h and
initial_c constant, computed or graph inputs (zeros when absent); LSTM peepholes (P); GRU's
linear_before_reset either way; the activations Sigmoid, Tanh and Relu in any position (the
defaults are f=Sigmoid, g=Tanh, h=Tanh; RNN's f=Tanh); outputs Y, Y_h and Y_c, each optional.
W, R, B and P must be constants (they are, in every exported model seen: initializers, or
Constant nodes that shape folding turned into initializers). A node in an If branch is written
out too when its shapes are static there; its Splits become Slices, since TVM 0.27 converts a
branch's Split into tuple items that its binary operators then mistake for constants.

More than MAX_STEPS steps in all is an InputConfiguration error naming DataInputConfig.
Refused by name, as OperatorAttributeNotImplemented (the node and what it sets):
layout=1 (batch first), clip, LSTM's input_forget, activations other than the three above
or any activation_alpha/beta, and a sequence_lens that is not the full length for every batch
entry (variable lengths are a run-time input this static unrolling cannot honour). A sequence
or batch length that is still unknown after shape folding is an InputConfiguration error.

The emitted ops (Split with a `split` input, Reshape with a shape input) are the forms of
opset 13 on; onnx_frontend brings older models to opset 13 before this runs.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from agent.errors import ClientError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

RECURRENT = {"LSTM": 4, "GRU": 3, "RNN": 1}  # op -> gates per direction
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}  # ONNX ops of the same name
MIN_OPSET = 13  # the ops emitted here are written in this opset's forms
# The most parts one Split or Concat over the steps has: TVM compiles a split into S outputs (or
# a concat of S inputs) as one kernel whose code grows with S; a tree of 8-way ones whose
# kernels repeat compiles in a fraction of the time.
FAN = 8
# The most steps (times directions, over all of a model's recurrent nodes) written out: 2,048
# is a bidirectional LSTM over 1,024 steps (10 s of 100-frame-a-second speech), several minutes of
# compiling; an attacker's million-step sequence would otherwise become tens of millions of nodes.
MAX_STEPS = 2048


def unroll(model: "onnx.ModelProto") -> int:
    """Replace every LSTM/GRU/RNN node of `model` (whose input shapes are static), in If/Loop
    bodies too; returns how many were replaced. Weights the old nodes alone read are dropped."""
    found = [n for n in _all_nodes(model.graph) if _is_recurrent(n)]
    if not found:
        return 0
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:  # pragma: no cover - onnx_frontend converts first
        raise AssertionError(f"unroll needs opset >= {MIN_OPSET}, the model has {opset}")
    shapes = _static_shapes(model, [n.input[0] for n in found])
    _check_size(found, shapes)
    taken = {name for node in _all_nodes(model.graph) for name in [*node.input, *node.output]}
    taken |= {v.name for v in model.graph.input} | {t.name for g in _all_graphs(model.graph) for t in g.initializer}
    _unroll_graph(model.graph, shapes, {}, taken)
    _drop_unused_initializers(model.graph)
    return len(found)


def _check_size(nodes: list[Any], shapes: dict[str, list[int]]) -> None:
    """At most MAX_STEPS steps (times directions) over the whole model, before anything is written."""
    total = 0
    for node in nodes:
        shape = shapes.get(node.input[0])
        if not shape:
            continue  # refused by _Cell, naming the node
        bidirectional = any(a.name == "direction" and a.s == b"bidirectional" for a in node.attribute)
        total += shape[0] * (2 if bidirectional else 1)
        if total > MAX_STEPS:
            raise ClientError("InputConfiguration",
                              f"{node.op_type} {_label(node)!r} runs over {shape[0]} steps, which brings the model's "
                              f"recurrent steps (times directions) to {total}; this agent writes out at most "
                              f"{MAX_STEPS} (compile time grows with them): give shorter sequences in "
                              f"DataInputConfig")


def _all_graphs(graph: Any) -> Iterator[Any]:
    """`graph` and the bodies of its If/Loop/Scan nodes, at any depth."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_graphs(sub)


def _all_nodes(graph: Any) -> Iterator[Any]:
    for each in _all_graphs(graph):
        yield from each.node


def _unroll_graph(graph: Any, shapes: dict[str, list[int]], outer: dict[str, Any], taken: set[str],
                  in_body: bool = False) -> None:
    """Rewrite `graph`'s own recurrent nodes and, first, those of its bodies; `outer` holds the
    constants an enclosing graph defines (a body may read them)."""
    constants = {**outer, **{t.name: t for t in graph.initializer}}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None:
                constants[node.output[0]] = value
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _unroll_graph(sub, shapes, constants, taken, True)
    if not any(_is_recurrent(n) for n in graph.node):
        return
    emitter = _Emitter(taken, constants, in_body)
    nodes = []
    for node in graph.node:
        if _is_recurrent(node):
            emitter.nodes = []
            _Cell(node, emitter, shapes).write()
            nodes.extend(emitter.nodes)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(emitter.initializers)


def _is_recurrent(node: Any) -> bool:
    return node.op_type in RECURRENT and node.domain in ("", "ai.onnx")


def _label(node: Any) -> str:
    return node.name or next((name for name in node.output if name), node.op_type)


def _refuse(node: Any, what: str) -> ClientError:
    return ClientError("OperatorAttributeNotImplemented",
                       f"{node.op_type} {_label(node)!r}: {what} is not supported (this agent writes "
                       f"{node.op_type} out step by step for TVM 0.27's ONNX frontend, which lacks it)")


def _static_shapes(model: "onnx.ModelProto", names: list[str]) -> dict[str, list[int]]:
    """Known static shapes of the model's tensors (bodies included); shape inference runs when
    one we need is missing."""
    import onnx

    def collect(m: "onnx.ModelProto") -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for graph in _all_graphs(m.graph):
            found.update({t.name: [int(d) for d in t.dims] for t in graph.initializer})
            for value in [*graph.input, *graph.value_info, *graph.output]:
                if value.type.WhichOneof("value") != "tensor_type" or not value.type.tensor_type.HasField("shape"):
                    continue
                dims = value.type.tensor_type.shape.dim
                if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
                    found[value.name] = [int(d.dim_value) for d in dims]
        return found

    shapes = collect(model)
    if any(name not in shapes for name in names):
        try:
            shapes.update(collect(onnx.shape_inference.infer_shapes(model)))
        except Exception:  # noqa: BLE001 - the missing shape is reported by the node that needs it
            pass
    return shapes


def _drop_unused_initializers(graph: Any) -> None:
    """Initializers no node (at any depth) nor output reads, in `graph` and its bodies."""
    used = {name for node in _all_nodes(graph) for name in node.input}
    for each in _all_graphs(graph):
        used |= {v.name for v in each.output}
        keep = [t for t in each.initializer if t.name in used]
        if len(keep) != len(each.initializer):
            del each.initializer[:]
            each.initializer.extend(keep)


class _Emitter:
    """Appends nodes and initializers under names no tensor of the model has."""

    def __init__(self, taken: set[str], constants: dict[str, Any], in_body: bool):
        self.taken, self.constants, self.in_body = taken, constants, in_body
        self.small: dict[tuple, str] = {}  # the shapes, sizes and indices every step reads, made once
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.count = 0

    def name(self, hint: str) -> str:
        while True:
            self.count += 1
            candidate = f"{hint}_{self.count}"
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate

    def constant(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def const(self, array: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key in self.small:
            return self.small[key]
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.require(array, requirements="C"), name))
        if key:
            self.small[key] = name
        return name

    def split(self, tensor: str, sizes: list[int], axis: int, hint: str) -> list[str]:
        """`tensor` cut along `axis` into parts of `sizes`: one Split, or in an If branch one
        Slice per part (TVM 0.27 converts a branch's Split to tuple items that its binary
        operators then take for constants)."""
        index = lambda values: self.const(np.array(values, np.int64), f"{hint}/index")  # noqa: E731
        if not self.in_body:
            parts = self.op("Split", [tensor, index(sizes)], hint, outputs=len(sizes), axis=axis)
            return parts if len(sizes) > 1 else [parts]
        starts = np.cumsum([0, *sizes])
        return [self.op("Slice", [tensor, index([start]), index([end]), index([axis])], hint)
                for start, end in zip(starts[:-1], starts[1:])]

    def op(self, op_type: str, inputs: list[str], hint: str, *, out: str | None = None, outputs: int = 1,
           **attrs: Any) -> Any:
        from onnx import helper

        names = [out] if out else [self.name(f"{hint}/{op_type}") for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(f"{hint}/{op_type}_node"), **attrs))
        return names if outputs > 1 else names[0]


class _Cell:
    """One recurrent node written out: the input projection, then each step of each direction."""

    def __init__(self, node: Any, emit: _Emitter, shapes: dict[str, list[int]]):
        from onnx import helper

        self.node, self.emit, self.op = node, emit, node.op_type
        self.hint = f"{_label(node)}/unrolled"
        self.gates = RECURRENT[self.op]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for key in ("clip", "activation_alpha", "activation_beta"):
            if key in attrs:
                raise _refuse(node, key)
        if attrs.get("layout", 0):
            raise _refuse(node, f"layout={attrs['layout']} (batch first)")
        if attrs.get("input_forget", 0):
            raise _refuse(node, "input_forget")
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if direction not in ("forward", "reverse", "bidirectional"):
            raise ClientError("OperatorAttributeValueNotValid", f"{self.op} {_label(node)!r}: direction {direction!r}")
        self.reverse = [direction == "reverse"] if direction != "bidirectional" else [False, True]
        self.dirs = len(self.reverse)
        self.linear_before_reset = bool(attrs.get("linear_before_reset", 0))
        self.activations = self._activations(attrs.get("activations"))

        x = self._input(0)
        if x not in shapes or len(shapes[x]) != 3:
            raise ClientError("InputConfiguration", f"{self.op} {_label(node)!r}: the shape of its input {x!r} is "
                                                    f"not static for these input shapes, so it cannot be unrolled")
        self.steps, self.batch, inputs = shapes[x]
        w, r = self._weight(1, "W"), self._weight(2, "R")
        self.hidden = int(r.shape[-1])
        if int(attrs.get("hidden_size", self.hidden)) != self.hidden or w.ndim != 3 or w.shape[2] != inputs:
            raise ClientError("OperatorAttributeValueNotValid",
                              f"{self.op} {_label(node)!r}: hidden_size {attrs.get('hidden_size')}, W "
                              f"{list(w.shape)} and R {list(r.shape)} do not fit its input {list(shapes[x])}")
        bias = self._weight(3, "B") if self._input(3) else np.zeros((self.dirs, 2 * self.gates * self.hidden), r.dtype)
        self.w, self.r, self.bias, self.dtype = w, r, bias, r.dtype
        expected = (self.dirs, self.gates * self.hidden)
        if w.shape[:2] != expected or r.shape != (*expected, self.hidden) or bias.shape != (self.dirs, 2 * expected[1]):
            raise ClientError("OperatorAttributeValueNotValid",
                              f"{self.op} {_label(node)!r}: W {list(w.shape)}, R {list(r.shape)} and B "
                              f"{list(bias.shape)} do not fit {self.dirs} direction(s) of hidden size {self.hidden}")
        self._check_sequence_lens()

    # --- reading the node ------------------------------------------------------------------------
    def _input(self, index: int) -> str:
        return self.node.input[index] if index < len(self.node.input) else ""

    def _output(self, index: int) -> str:
        return self.node.output[index] if index < len(self.node.output) else ""

    def _weight(self, index: int, role: str) -> np.ndarray:
        value = self.emit.constant(self._input(index))
        if value is None:
            raise _refuse(self.node, f"{role} computed at run time (only constant weights)")
        return value

    def _activations(self, given: list | None) -> list[str]:
        names = [a.decode() if isinstance(a, bytes) else a for a in given] if given else \
            list(DEFAULT_ACTIVATIONS[self.op]) * self.dirs
        per_direction = len(DEFAULT_ACTIVATIONS[self.op])
        if len(names) != per_direction * self.dirs:
            raise ClientError("OperatorAttributeValueNotValid",
                              f"{self.op} {_label(self.node)!r}: {len(names)} activations for {self.dirs} "
                              f"direction(s); it needs {per_direction} per direction")
        unknown = [n for n in names if n.lower() not in ACTIVATIONS]
        if unknown:
            raise _refuse(self.node, f"activation {unknown[0]} (only {', '.join(ACTIVATIONS.values())})")
        return [ACTIVATIONS[n.lower()] for n in names]

    def _check_sequence_lens(self) -> None:
        name = self._input(4)
        if not name:
            return
        lengths = self.emit.constant(name)
        if lengths is None or lengths.shape != (self.batch,) or not np.all(lengths == self.steps):
            raise _refuse(self.node, f"sequence_lens other than the full length {self.steps} for every batch entry")

    # --- writing it out --------------------------------------------------------------------------
    def write(self) -> None:
        xs = self._project()
        hs0 = self._initial(5, "initial_h")
        cs0 = self._initial(6, "initial_c") if self.op == "LSTM" else [None] * self.dirs
        peep = self.emit.constant(self._input(7)) if self.op == "LSTM" and self._input(7) else None
        if self.op == "LSTM" and self._input(7) and peep is None:
            raise _refuse(self.node, "P computed at run time (only constant peepholes)")
        shape_y = self.emit.const(np.array([1, 1, self.batch, self.hidden], np.int64), f"{self.hint}/shape")
        ys, last_h, last_c = [], [], []
        for d, reverse in enumerate(self.reverse):
            acts = self.activations[d * len(DEFAULT_ACTIVATIONS[self.op]):(d + 1) * len(DEFAULT_ACTIVATIONS[self.op])]
            step = self._step_weights(d, peep)
            h, c = hs0[d], cs0[d]
            outputs: list[str] = [""] * self.steps
            for t in (reversed(range(self.steps)) if reverse else range(self.steps)):
                h, c = self._step(xs[t][d], h, c, step, acts)
                outputs[t] = h
            if self._output(0):
                ys.append(self._concat([self.emit.op("Reshape", [o, shape_y], self.hint) for o in outputs]))
            last_h.append(h)
            last_c.append(c)
        if self._output(0):
            self._join(ys, 1, self._output(0), None)
        if self._output(1):
            self._join(last_h, 0, self._output(1), [1, self.batch, self.hidden])
        if self.op == "LSTM" and self._output(2):
            self._join(last_c, 0, self._output(2), [1, self.batch, self.hidden])

    def _join(self, parts: list[str], axis: int, out: str, shape: list[int] | None) -> None:
        """Concatenate the directions' tensors (reshaped to `shape` first) into the output `out`."""
        if shape is not None:
            target = self.emit.const(np.array(shape, np.int64), f"{self.hint}/shape")
            if len(parts) == 1:
                self.emit.op("Reshape", [parts[0], target], self.hint, out=out)
                return
            parts = [self.emit.op("Reshape", [p, target], self.hint) for p in parts]
        if len(parts) == 1:
            self.emit.op("Identity", parts, self.hint, out=out)
        else:
            self.emit.op("Concat", parts, self.hint, out=out, axis=axis)

    def _project(self) -> list[list[str]]:
        """X·Wᵀ plus the biases that add straight in, for every step, gate and direction in one
        MatMul; then cut into [step][direction] tensors of shape [batch, gates*hidden]."""
        gh = self.gates * self.hidden
        weights = np.concatenate([self.w[d].T for d in range(self.dirs)], axis=1)
        biases = []
        for d in range(self.dirs):
            wb, rb = self.bias[d, :gh], self.bias[d, gh:].copy()
            if self.op == "GRU" and self.linear_before_reset:
                rb[2 * self.hidden:] = 0  # Rbh is inside r * (...): added per step instead
            biases.append(wb + rb)
        projected = self.emit.op("MatMul", [self._input(0), self.emit.const(weights, f"{self.hint}/WT")], self.hint)
        projected = self.emit.op("Add", [projected, self.emit.const(np.concatenate(biases), f"{self.hint}/bias")],
                                 self.hint)
        flat = self.emit.const(np.array([self.batch, self.dirs * gh], np.int64), f"{self.hint}/shape")
        steps = []
        for part in self._split(projected, self.steps):
            part = self.emit.op("Reshape", [part, flat], self.hint)
            if self.dirs == 1:
                steps.append([part])
            else:
                steps.append(self.emit.split(part, [gh] * self.dirs, 1, self.hint))
        return steps

    def _split(self, tensor: str, count: int) -> list[str]:
        """`tensor` cut along axis 0 into `count` parts of 1, by Splits of at most FAN parts."""
        if count == 1:
            return [tensor]
        chunk = FAN ** math.ceil(math.log(count, FAN) - 1) if count > FAN else 1
        sizes = [chunk] * (count // chunk) + ([count % chunk] if count % chunk else [])
        parts = self.emit.split(tensor, sizes, 0, self.hint)
        return [piece for part, size in zip(parts, sizes) for piece in self._split(part, size)]

    def _concat(self, parts: list[str]) -> str:
        """`parts` joined along axis 0, by Concats of at most FAN parts."""
        if len(parts) == 1:
            return parts[0]
        chunk = FAN ** math.ceil(math.log(len(parts), FAN) - 1) if len(parts) > FAN else len(parts)
        if chunk < len(parts):
            parts = [self._concat(parts[i:i + chunk]) for i in range(0, len(parts), chunk)]
        return self.emit.op("Concat", parts, self.hint, axis=0)

    def _initial(self, index: int, role: str) -> list[str]:
        """initial_h or initial_c per direction, as [batch, hidden]; zeros when absent."""
        name = self._input(index)
        if not name:
            zeros = self.emit.const(np.zeros((self.batch, self.hidden), self.dtype), f"{self.hint}/{role}")
            return [zeros] * self.dirs
        value = self.emit.constant(name)
        if value is not None:
            if value.shape != (self.dirs, self.batch, self.hidden):
                raise ClientError("OperatorAttributeValueNotValid",
                                  f"{self.op} {_label(self.node)!r}: {role} has shape {list(value.shape)}, not "
                                  f"{[self.dirs, self.batch, self.hidden]}")
            return [self.emit.const(value[d], f"{self.hint}/{role}") for d in range(self.dirs)]
        flat = self.emit.const(np.array([self.batch, self.hidden], np.int64), f"{self.hint}/shape")
        if self.dirs == 1:
            return [self.emit.op("Reshape", [name, flat], self.hint)]
        parts = self.emit.split(name, [1] * self.dirs, 0, self.hint)
        return [self.emit.op("Reshape", [p, flat], self.hint) for p in parts]

    def _step_weights(self, d: int, peep: np.ndarray | None) -> dict[str, str]:
        """The constants one direction's steps read: Rᵀ (split for GRU), biases, peepholes."""
        hidden, const, hint = self.hidden, self.emit.const, self.hint
        rt = self.r[d].T  # [hidden, gates*hidden]
        names: dict[str, str] = {}
        if self.op == "GRU":
            if self.linear_before_reset:
                names["RT"] = const(rt, f"{hint}/RT")
                rb = np.zeros(3 * hidden, self.dtype)
                rb[2 * hidden:] = self.bias[d, 5 * hidden:]
                names["Rb"] = const(rb, f"{hint}/Rb")
            else:
                names["RT_zr"] = const(rt[:, :2 * hidden], f"{hint}/RT")
                names["RT_h"] = const(rt[:, 2 * hidden:], f"{hint}/RT")
        else:
            names["RT"] = const(rt, f"{hint}/RT")
        if peep is not None:
            for k, gate in enumerate("iof"):
                names[f"P{gate}"] = const(peep[d, k * hidden:(k + 1) * hidden], f"{hint}/P{gate}")
        return names

    def _step(self, x: str, h: str, c: str | None, w: dict[str, str], acts: list[str]) -> tuple[str, str | None]:
        op, hint, hidden = self.emit.op, self.hint, self.hidden
        split = lambda tensor, sizes: self.emit.split(tensor, [s * hidden for s in sizes], 1, hint)  # noqa: E731
        if self.op == "RNN":
            return op(acts[0], [op("Add", [x, op("MatMul", [h, w["RT"]], hint)], hint)], hint), None
        if self.op == "LSTM":
            gates = op("Add", [x, op("MatMul", [h, w["RT"]], hint)], hint)
            i, o, f, g = split(gates, [1, 1, 1, 1])
            if "Pi" in w:
                i = op("Add", [i, op("Mul", [w["Pi"], c], hint)], hint)
                f = op("Add", [f, op("Mul", [w["Pf"], c], hint)], hint)
            i, f, g = op(acts[0], [i], hint), op(acts[0], [f], hint), op(acts[1], [g], hint)
            c = op("Add", [op("Mul", [f, c], hint), op("Mul", [i, g], hint)], hint)
            if "Po" in w:
                o = op("Add", [o, op("Mul", [w["Po"], c], hint)], hint)
            return op("Mul", [op(acts[0], [o], hint), op(acts[2], [c], hint)], hint), c
        # GRU: z and r from x and h; the candidate n from x and r·h (or r·(h·Rhᵀ + Rbh)).
        x_zr, x_n = split(x, [2, 1])
        if self.linear_before_reset:
            rec = op("Add", [op("MatMul", [h, w["RT"]], hint), w["Rb"]], hint)
            rec_zr, rec_n = split(rec, [2, 1])
            z, r = split(op(acts[0], [op("Add", [x_zr, rec_zr], hint)], hint), [1, 1])
            n = op(acts[1], [op("Add", [x_n, op("Mul", [r, rec_n], hint)], hint)], hint)
        else:
            zr = op(acts[0], [op("Add", [x_zr, op("MatMul", [h, w["RT_zr"]], hint)], hint)], hint)
            z, r = split(zr, [1, 1])
            n = op(acts[1], [op("Add", [x_n, op("MatMul", [op("Mul", [r, h], hint), w["RT_h"]], hint)], hint)], hint)
        # h' = (1 - z)·n + z·h = n + z·(h - n)
        return op("Add", [n, op("Mul", [z, op("Sub", [h, n], hint)], hint)], hint), None
