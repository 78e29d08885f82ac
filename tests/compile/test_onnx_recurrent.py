"""LSTM, GRU and RNN written out step by step (agent.compile.onnx_recurrent), compiled by TVM
and checked against onnxruntime; the attributes it refuses; real published models with LSTMs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent import runtime
from agent.compile import onnx_frontend, onnx_recurrent
from agent.errors import ClientError
from tests.compile.helpers import compile_artifact, onnxruntime_outputs, save
from tests.conftest import PUBLISHED_MODELS, published_model

STEPS, BATCH, INPUTS, HIDDEN = 11, 2, 3, 4  # 11 steps: the 8-way split and concat trees have a remainder
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
RNG = np.random.default_rng(7)


def _array(*shape):
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


class _Graph:
    """Recurrent nodes over one input x [STEPS, BATCH, INPUTS], each output a graph output."""

    def __init__(self):
        self.nodes, self.initializers, self.outputs = [], [], []
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, BATCH, INPUTS])]
        self.feed = {"x": _array(STEPS, BATCH, INPUTS)}

    def const(self, name, array):
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def state(self, name, dirs, kind):
        """An initial state: a graph input, a constant, or absent."""
        if kind == "input":
            self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [dirs, BATCH, HIDDEN]))
            self.feed[name] = _array(dirs, BATCH, HIDDEN)
            return name
        return self.const(name, _array(dirs, BATCH, HIDDEN)) if kind == "const" else ""

    def add(self, op, name, direction="forward", *, h0=None, c0=None, peepholes=False, outputs=(True, True, True),
            x="x", **attrs):
        dirs, gates = (2 if direction == "bidirectional" else 1), GATES[op]
        inputs = [x, self.const(f"{name}_W", _array(dirs, gates * HIDDEN, INPUTS)),
                  self.const(f"{name}_R", _array(dirs, gates * HIDDEN, HIDDEN)),
                  self.const(f"{name}_B", _array(dirs, 2 * gates * HIDDEN)), "", self.state(f"{name}_h0", dirs, h0)]
        if op == "LSTM":
            inputs += [self.state(f"{name}_c0", dirs, c0), self.const(f"{name}_P", _array(dirs, 3 * HIDDEN))
                       if peepholes else ""]
        names = [f"{name}_{out}" if wanted else "" for out, wanted in zip(("y", "yh", "yc"), outputs)]
        names = names[:3 if op == "LSTM" else 2]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, hidden_size=HIDDEN, direction=direction,
                                           **attrs))
        self.outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n]

    def model(self, opset=17):
        graph = helper.make_graph(self.nodes, "recurrent", self.inputs, self.outputs, initializer=self.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _if_model_branches(graph: _Graph) -> None:
    """An If whose branches hold an LSTM and a GRU (a body's recurrent nodes are written out too)."""
    graph.inputs.append(helper.make_tensor_value_info("which", TensorProto.BOOL, []))
    branches = {}
    for branch, op in (("then", "LSTM"), ("else", "GRU")):
        inner = _Graph()
        inner.add(op, f"{branch}_{op.lower()}", "reverse" if op == "GRU" else "forward", outputs=(False, True))
        graph.initializers += inner.initializers
        out = inner.nodes[0].output[1]
        result = helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, BATCH, HIDDEN])
        branches[branch] = helper.make_graph(inner.nodes, branch, [], [result])
    graph.nodes.append(helper.make_node("If", ["which"], ["chosen"], then_branch=branches["then"],
                                        else_branch=branches["else"]))
    graph.outputs.append(helper.make_tensor_value_info("chosen", TensorProto.FLOAT, [1, BATCH, HIDDEN]))


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    """One model with each case below, compiled once (a compile costs seconds)."""
    graph = _Graph()
    graph.add("LSTM", "lstm_fwd", h0="input", c0="input")
    graph.add("LSTM", "lstm_rev_peep", "reverse", peepholes=True, outputs=(False, True, True))
    graph.add("LSTM", "lstm_bi", "bidirectional", h0="const", c0="const",
              activations=["Sigmoid", "Relu", "Tanh", "Sigmoid", "Tanh", "Relu"])
    graph.add("GRU", "gru_fwd", h0="input")
    graph.add("GRU", "gru_bi_lbr", "bidirectional", linear_before_reset=1)
    graph.add("GRU", "gru_rev_lbr", "reverse", h0="const", linear_before_reset=1)
    graph.add("RNN", "rnn_bi", "bidirectional", h0="input")
    graph.add("RNN", "rnn_relu", activations=["Relu"], outputs=(True, False))
    full = graph.const("full_lengths", np.full(BATCH, STEPS, np.int32))
    graph.add("LSTM", "lstm_full_lengths")
    graph.nodes[-1].input[4] = full
    _if_model_branches(graph)
    root = tmp_path_factory.mktemp("recurrent")
    path = save(graph.model(), root / "recurrent.onnx")
    return path, runtime.load(compile_artifact(path, root / "artifact")), graph


@pytest.mark.parametrize("which", [True, False])
def test_every_kind_matches_onnxruntime(every_kind, which):
    path, compiled, graph = every_kind
    feed = {**graph.feed, "which": np.array(which)}
    names = [o.name for o in graph.outputs]
    got, want = compiled.run(feed), onnxruntime_outputs(path, feed)
    assert len(got) == len(want) == len(names) == 21
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5, err_msg=name)


def test_no_recurrent_node_is_left_and_the_input_projection_is_one_matmul(every_kind):
    path, _, graph = every_kind
    model = onnx_frontend.load_model(path)
    prepared = onnx_frontend.prepare_graph(model, {"x": [STEPS, BATCH, INPUTS], "lstm_fwd_h0": [1, BATCH, HIDDEN],
                                                   "lstm_fwd_c0": [1, BATCH, HIDDEN], "gru_fwd_h0": [1, BATCH, HIDDEN],
                                                   "rnn_bi_h0": [2, BATCH, HIDDEN], "which": []})
    ops = [n.op_type for n in onnx_recurrent._all_nodes(prepared.graph)]
    assert not set(ops) & set(GATES)
    # per node: one projection of all steps, then one MatMul per step and direction (two for GRU
    # without linear_before_reset: z and r from h, the candidate from r*h)
    steps = {"lstm_fwd": 1, "lstm_rev_peep": 1, "lstm_bi": 2, "gru_fwd": 2, "gru_bi_lbr": 2, "gru_rev_lbr": 1,
             "rnn_bi": 2, "rnn_relu": 1, "lstm_full_lengths": 1, "then_lstm": 1, "else_gru": 2}
    assert ops.count("MatMul") == len(steps) + STEPS * sum(steps.values())
    fan = [len(n.output) for n in onnx_recurrent._all_nodes(prepared.graph) if n.op_type == "Split"]
    fan += [len(n.input) for n in onnx_recurrent._all_nodes(prepared.graph) if n.op_type == "Concat"]
    assert max(fan) <= onnx_recurrent.FAN
    assert not {t.name for t in prepared.graph.initializer} & {"lstm_fwd_W", "gru_fwd_R"}  # the originals dropped


# --- what is refused -------------------------------------------------------------------------------
@pytest.mark.parametrize("op, attrs, inputs, words", [
    ("LSTM", {"clip": 3.0}, {}, "LSTM 'cell': clip is not supported"),
    ("GRU", {"layout": 1}, {}, "GRU 'cell': layout=1 (batch first) is not supported"),
    ("LSTM", {"input_forget": 1}, {}, "LSTM 'cell': input_forget is not supported"),
    ("RNN", {"activations": ["HardSigmoid"]}, {}, "RNN 'cell': activation HardSigmoid (only Sigmoid, Tanh, Relu)"),
    ("GRU", {"activations": ["Sigmoid", "Tanh"], "activation_alpha": [0.5]}, {},
     "GRU 'cell': activation_alpha is not supported"),
    ("LSTM", {}, {"lengths": np.array([STEPS, STEPS - 1], np.int32)},
     f"LSTM 'cell': sequence_lens other than the full length {STEPS} for every batch entry is not supported"),
    ("LSTM", {}, {"lengths": "input"}, "sequence_lens other than the full length"),
    ("GRU", {}, {"W": "input"}, "GRU 'cell': W computed at run time (only constant weights) is not supported"),
])
def test_what_cannot_be_written_out_is_refused_naming_the_node(tmp_path, op, attrs, inputs, words):
    gates, names = GATES[op], {}
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, BATCH, INPUTS])]
    initializers = []
    for name, value in [("W", _array(1, gates * HIDDEN, INPUTS)), ("R", _array(1, gates * HIDDEN, HIDDEN)),
                        ("lengths", None)]:
        given = inputs.get(name, value)
        if given is None:
            continue
        if isinstance(given, str):
            shape = [BATCH] if name == "lengths" else list(value.shape)
            kind = TensorProto.INT32 if name == "lengths" else TensorProto.FLOAT
            graph_inputs.append(helper.make_tensor_value_info(name, kind, shape))
        else:
            initializers.append(numpy_helper.from_array(given, name))
        names[name] = name
    node = helper.make_node(op, ["x", "W", "R", "", names.get("lengths", "")], ["", "cell"], name="cell",
                            hidden_size=HIDDEN, **attrs)
    output = helper.make_tensor_value_info("cell", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", graph_inputs, [output], initializer=initializers)
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "cell.onnx")
    with pytest.raises(ClientError) as excinfo:
        onnx_frontend.load_and_import(path, None)
    assert excinfo.value.keyword == "OperatorAttributeNotImplemented"
    assert words in excinfo.value.detail


def test_a_sequence_longer_than_the_limit_is_refused_naming_data_input_config(tmp_path):
    weights = [numpy_helper.from_array(_array(1, 4, 1), "W"), numpy_helper.from_array(_array(1, 4, 1), "R")]
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="long", hidden_size=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["steps", 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=weights)
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "long.onnx")
    limit = onnx_recurrent.MAX_STEPS
    assert onnx_frontend.load_and_import(path, json.dumps({"x": [limit, 1, 1]})).outputs[0].shape == (limit, 1, 1, 1)
    with pytest.raises(ClientError) as excinfo:
        onnx_frontend.load_and_import(path, json.dumps({"x": [limit + 1, 1, 1]}))
    assert excinfo.value.reason.startswith(f"ClientError: InputConfiguration: LSTM 'long' runs over {limit + 1} steps")
    assert "give shorter sequences in DataInputConfig" in excinfo.value.reason


# --- real published models -------------------------------------------------------------------------
def _matches_onnxruntime(name, config, feed, tmp_path, atol):
    path = published_model(name)
    compiled = runtime.load(compile_artifact(path, tmp_path / "artifact", json.dumps(config)))
    got, want = compiled.run(feed), onnxruntime_outputs(path, feed)
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=atol)
    return got


@pytest.mark.models
def test_published_silero_vad_matches_onnxruntime(tmp_path):
    """Silero VAD (opset 15): STFT as a convolution, an encoder, an LSTM decoder; a scalar
    sample-rate input; its state carried between 512-sample chunks."""
    rng = np.random.default_rng(3)
    shape = PUBLISHED_MODELS["silero-vad"][2]
    feed = {"input": (rng.standard_normal(shape) * 0.3).astype(np.float32),
            "state": (rng.standard_normal((2, 1, 128)) * 0.3).astype(np.float32), "sr": np.array(16000, np.int64)}
    probability, state = _matches_onnxruntime("silero-vad", {"input": shape, "state": [2, 1, 128], "sr": []}, feed,
                                              tmp_path, 1e-5)
    assert probability.shape == (1, 1) and state.shape == (2, 1, 128)


@pytest.mark.models
@pytest.mark.slow
def test_published_silero_vad_sequence_matches_onnxruntime(tmp_path):
    """The sequence variant: an LSTM over 16 frames, its initial state given as inputs."""
    rng = np.random.default_rng(4)
    shape = PUBLISHED_MODELS["silero-vad-sequence"][2]
    feed = {"input": (rng.standard_normal(shape) * 0.3).astype(np.float32),
            "h": (rng.standard_normal((1, 1, 128)) * 0.3).astype(np.float32),
            "c": (rng.standard_normal((1, 1, 128)) * 0.3).astype(np.float32)}
    _matches_onnxruntime("silero-vad-sequence", {"input": shape, "h": [1, 1, 128], "c": [1, 1, 128]}, feed,
                         tmp_path, 1e-5)


@pytest.mark.models
@pytest.mark.slow
def test_published_ddddocr_crnn_matches_onnxruntime(tmp_path):
    """ddddocr's text recognizer: opset 12 (converted to 13), convolutions, a bidirectional LSTM
    of hidden size 512 over 32 steps, a 8210-class projection."""
    shape = PUBLISHED_MODELS["ddddocr"][2]
    feed = {"input1": np.random.default_rng(5).random(shape, dtype=np.float32)}
    (logits,) = _matches_onnxruntime("ddddocr", {"input1": shape}, feed, tmp_path, 1e-3)
    assert logits.shape[0] == shape[3] // 8
