"""Corrupt and adversarial ONNX models through the real prepare stage, in bounded memory.

Every case below goes through agent.compile.onnx_frontend.load_and_import (what the compile
child's prepare stage runs) in one child process (tests/badinput/model_child.py) under the
compile child's kind of RLIMIT_DATA, which reports each case's outcome, time and peak memory.
Each must end in a ClientError whose FailureReason names what is wrong (the tensor, the input,
the path, the cycle), within MAX_CASE_SECONDS and MAX_CASE_PEAK_MB above what the process held
before it: the huge ones declare terabytes, so the bound shows nothing was allocated for them.
tests/compile/test_onnx_frontend.py has one case per error mapping (two corrupt files, external
data leaving the folder by '..', by an absolute path and by a symlinked file); this is the corpus
beyond it. A hypothesis test at the end damages the sample model's bytes at random and reads them
in this process, up to the shape checks (no TVM).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from agent.compile import datainput, onnx_frontend
from agent.errors import ClientError
from agent.samples import build_sample_model
from tests.badinput.conftest import tally

pytestmark = pytest.mark.badinput

REPO = Path(__file__).resolve().parents[2]
MAX_CASE_SECONDS = 60.0  # on a loaded 2-core machine; most take well under a second
MAX_CASE_PEAK_MB = 768  # TVM's import of a small graph takes ~200 MiB; a refused bomb far less
TB = "1099511627776 elements"  # 2^40
LIMIT = str(datainput.MAX_ELEMENTS_PER_TENSOR)
BAD = "ClientError: InputConfiguration: "
INCOMPATIBLE = BAD + "Incompatible ONNX model: "


def value(name: str, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def graph_model(nodes, inputs, outputs, initializers=(), opset: int = 17, domains=()):
    graph = helper.make_graph(nodes, "adversarial", inputs, outputs, initializer=list(initializers))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    return model


def declared(name: str, dims: list[int]) -> onnx.TensorProto:
    """A float tensor that declares `dims` and holds no data at all."""
    tensor = onnx.TensorProto()
    tensor.name, tensor.data_type = name, TensorProto.FLOAT
    tensor.dims.extend(dims)
    return tensor


def ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def external(folder: Path, location: str, **fields: str) -> Path:
    """A MatMul model whose weight lives in weights.bin beside it, then pointed at `location`."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    model = graph_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [value("x", [1, 3])], [value("y", [1, 3])],
                        [weight])
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    entries = model.graph.initializer[0].external_data
    wanted = {"location": location, **fields}
    del entries[:]
    for key, text in wanted.items():
        entries.add(key=key, value=text)
    onnx.save(model, str(path))
    return path


def build_cases(root: Path) -> dict[str, tuple[dict, list[str]]]:
    """{case id: (the case for model_child, substrings its FailureReason must hold)}."""
    cases: dict[str, tuple[dict, list[str]]] = {}

    def add(case_id: str, model_or_path, expect: list[str], config: str | None = None) -> None:
        if isinstance(model_or_path, Path):
            path = model_or_path
        else:
            path = root / f"{case_id}.onnx"
            if isinstance(model_or_path, bytes):
                path.write_bytes(model_or_path)
            else:
                path.write_bytes(model_or_path.SerializeToString())
        cases[case_id] = ({"id": case_id, "path": str(path), "data_input_config": config}, expect)

    sample = build_sample_model().SerializeToString()
    # Corrupt files.
    for fraction in (0.02, 0.5, 0.97):
        add(f"truncated at {fraction:.0%}", sample[:int(len(sample) * fraction)], [BAD])
    rng = np.random.default_rng(7)
    for size in (16, 4096, 1 << 20):
        add(f"{size} random bytes", rng.integers(0, 256, size, dtype=np.uint8).tobytes(), [BAD])
    add("a protobuf field declaring 2 GiB", b"\x3a\xff\xff\xff\xff\x07" + b"\0" * 64, [INCOMPATIBLE])
    add("an empty graph", graph_model([], [value("x", [1])], [value("x", [1])]), [INCOMPATIBLE, "holds no graph"])

    # External data leading out of the model's folder, or past its file.
    add("external data at ../../etc/passwd", external(root / "ext1", "../../etc/passwd"),
        [INCOMPATIBLE, "tensor 'w'", "'../../etc/passwd', outside the model's folder"])
    add("external data at an absolute path", external(root / "ext2", "/proc/self/environ"),
        [INCOMPATIBLE, "tensor 'w'", "'/proc/self/environ', outside the model's folder"])
    outside = root / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"\0" * 36)
    folder = root / "ext3"
    folder.mkdir()
    (folder / "sub").symlink_to(outside)
    add("external data through a symlinked folder", external(folder, "sub/w.bin"),
        [INCOMPATIBLE, "'sub/w.bin', outside the model's folder"])
    add("external data length of 1 TiB", external(root / "ext4", "weights.bin", length=str(1 << 40)),
        [INCOMPATIBLE, "tensor 'w'", "of 'weights.bin', which has 36"])
    add("external data offset past the file", external(root / "ext5", "weights.bin", offset=str(1 << 40)),
        [INCOMPATIBLE, "tensor 'w'", "which has 36"])
    add("external data offset not a number", external(root / "ext6", "weights.bin", offset="-0x10"),
        [INCOMPATIBLE, "tensor 'w'", "not a number"])

    # Huge declared shapes: terabytes, declared in a few bytes.
    add("an initializer declaring 2^40 elements",
        graph_model([helper.make_node("Add", ["x", "w"], ["y"])], [value("x", [1, 4])], [value("y", None)],
                    [declared("w", [1 << 20, 1 << 20])]), [INCOMPATIBLE, "tensor 'w'", TB, LIMIT])
    add("a Constant declaring 2^40 elements",
        graph_model([helper.make_node("Constant", [], ["w"], value=declared("", [1 << 20, 1 << 20])),
                     helper.make_node("Add", ["x", "w"], ["y"])], [value("x", [1, 4])], [value("y", None)]),
        [INCOMPATIBLE, "a constant tensor", TB])
    add("an initializer with a negative dim",
        graph_model([helper.make_node("Add", ["x", "w"], ["y"])], [value("x", [1, 4])], [value("y", None)],
                    [declared("w", [-1, 4])]), [INCOMPATIBLE, "tensor 'w'", "negative dim"])
    add("ConstantOfShape making 2^40 elements",
        graph_model([helper.make_node("ConstantOfShape", ["s"], ["big"]), helper.make_node("Add", ["x", "big"], ["y"])],
                    [value("x", [1, 1])], [value("y", None)], [ints("s", [1 << 20, 1 << 20])]),
        [BAD, "(for these input shapes)", TB])
    add("Expand to 2^40 elements, reduced back to one",
        graph_model([helper.make_node("Expand", ["x", "s"], ["big"]),
                     helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0)],
                    [value("x", [1, 1])], [value("y", None)], [ints("s", [1 << 20, 1 << 20])]),
        [BAD, "tensor 'big' (for these input shapes)", TB])
    relu = graph_model([helper.make_node("Relu", ["x"], ["y"])], [value("x", ["N", "C"])], [value("y", None)])
    add("a model input declaring a dim of 10^12",
        graph_model([helper.make_node("Relu", ["x"], ["y"])], [value("x", [10**12, 4])], [value("y", None)]),
        [BAD, "input 'x'", "4000000000000 elements"])
    add("DataInputConfig asking for 10^12 elements", relu, [BAD, "input 'x'", "1000000000000 elements"],
        '{"x": [1000000, 1000000]}')
    three = graph_model([helper.make_node("Sum", ["a", "b", "c"], ["y"])],
                        [value(n, ["N", "C"]) for n in "abc"], [value("y", None)])
    add("DataInputConfig with three inputs of 2^30 each", three,
        [BAD, "together", str(datainput.MAX_ELEMENTS_ALL_INPUTS)],
        json.dumps({n: [1, 1 << 30] for n in "abc"}))
    add("DataInputConfig nested 10^4 deep", relu, [BAD, "DataInputConfig is not valid JSON"], "[" * 10_000)

    # Graphs that are no graphs.
    add("a cycle of two nodes",
        graph_model([helper.make_node("Add", ["x", "b"], ["a"], name="add"),
                     helper.make_node("Relu", ["a"], ["b"], name="relu"),
                     helper.make_node("Identity", ["a"], ["y"])], [value("x", [1, 4])], [value("y", [1, 4])]),
        [INCOMPATIBLE, "the graph has a cycle: Add 'add' -> Relu 'relu' -> Add 'add'"])
    add("a node consuming its own output",
        graph_model([helper.make_node("Add", ["x", "y"], ["y"])], [value("x", [1, 4])], [value("y", [1, 4])]),
        [INCOMPATIBLE, "the graph has a cycle: Add 'y' -> Add 'y'"])
    add("a node consuming a tensor nothing makes",
        graph_model([helper.make_node("Add", ["x", "ghost"], ["y"])], [value("x", [1, 4])], [value("y", [1, 4])]),
        [INCOMPATIBLE, "node Add 'y' reads tensor 'ghost', which no input, initializer or node makes"])
    add("an operator from an unknown domain",
        graph_model([helper.make_node("Exec", ["x"], ["y"], domain="com.evil", command="reboot")],
                    [value("x", [1, 4])], [value("y", [1, 4])], domains=["com.evil"]),
        ["ClientError: ", "Exec"])
    # An opset from the future: onnx cannot convert it down to one TVM's frontend is written for.
    add("opset 9999", graph_model([helper.make_node("Relu", ["x"], ["y"])], [value("x", [1, 4])], [value("y", [1, 4])],
                                  opset=9999),
        [BAD, "the model's opset 9999 is outside the opsets 13-23", "could not convert it to opset 23"])
    # LSTMs are written out step by step: a million steps would be tens of millions of nodes.
    lstm_weights = [numpy_helper.from_array(np.ones((1, 4, 1), np.float32), n) for n in ("W", "R")]
    add("an LSTM over a million steps",
        graph_model([helper.make_node("LSTM", ["x", "W", "R"], ["", "h"], hidden_size=1)],
                    [value("x", [1_000_000, 1, 1])], [value("h", [1, 1, 1])], lstm_weights),
        [BAD, "LSTM 'h' runs over 1000000 steps", "at most 2048", "DataInputConfig"])
    chain = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(2000)]
    add("a chain of 2000 nodes (deep, not hostile)",
        graph_model(chain, [value("t0", [1, 4])], [value("t2000", [1, 4])]), ["imported"])
    return cases


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    cases = build_cases(root)
    (root / "cases.json").write_text(json.dumps([case for case, _ in cases.values()]))
    done = subprocess.run([sys.executable, "-m", "tests.badinput.model_child", str(root / "cases.json"),
                           str(root / "results.json")], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TVM_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = {result["id"]: result for result in json.loads((root / "results.json").read_text())}
    return {case_id: (outcomes[case_id], expect) for case_id, (_, expect) in cases.items()}



def _case_ids() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        return list(build_cases(Path(scratch)))


CASE_IDS = _case_ids()


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_each_adversarial_model_fails_clearly_in_bounded_time_and_memory(results, case_id):
    outcome, expect = results[case_id]
    said = outcome["outcome"]
    assert not said.startswith("UNEXPECTED"), said
    for words in expect:
        assert words in said, (words, said)
    assert outcome["seconds"] < MAX_CASE_SECONDS, outcome
    assert outcome["peak_mb"] < MAX_CASE_PEAK_MB, outcome
    tally("Models: corrupt, hostile external data, terabyte shapes, cycles (real prepare stage, own process)", 1)


# --- random damage -------------------------------------------------------------------------------
SAMPLE = build_sample_model().SerializeToString()


@st.composite
def damaged_models(draw) -> bytes:
    data = bytearray(SAMPLE)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "change", "cut", "insert", "truncate"]))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "change":
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
        if not data:
            data = bytearray(b"\x0a")
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged_models())
def test_damaged_model_bytes_are_refused_or_read_up_to_the_shapes(tmp_path_factory, data):
    """load_model, the model's inputs and outputs, and their shapes: pure Python and onnx's parser."""
    path = tmp_path_factory.mktemp("damaged") / "model.onnx"
    path.write_bytes(data)
    try:
        model = onnx_frontend.load_model(path)
        inputs = onnx_frontend.model_inputs(model)
        onnx_frontend.model_outputs(model)
        onnx_frontend.resolve_shapes(inputs, None)
    except ClientError as failure:
        assert failure.keyword == "InputConfiguration" and failure.detail, failure
    tally("Models: the sample model's bytes flipped, changed, cut, inserted or truncated (load and shapes)", 1)
