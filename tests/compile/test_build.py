"""Build + export + agent.runtime.load, against onnxruntime; build error translation."""
from __future__ import annotations

import numpy as np
import pytest

from agent import runtime
from agent.compile import build, onnx_frontend, schedule, target
from agent.errors import ClientError, ServerError
from agent.samples import make_sample_model
from tests.compile.helpers import compile_artifact, onnxruntime_outputs


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return make_sample_model(tmp_path_factory.mktemp("sample") / "model.onnx")


@pytest.mark.parametrize("config, batch, layout", [(None, 1, "NHWC"), ('{"input": [3, 3, 64, 64]}', 3, "NCHW")])
def test_round_trip_matches_onnxruntime(sample, tmp_path, config, batch, layout):
    artifact = compile_artifact(sample, tmp_path / "artifact", config, layout)
    assert (artifact / "model.so").stat().st_size > 0
    model = runtime.load(artifact)
    x = np.random.default_rng(1).random((batch, 3, 64, 64), dtype=np.float32)
    got = model.run({"input": x})
    want = onnxruntime_outputs(sample, {"input": x})
    assert [g.shape for g in got] == [(batch, 10), (batch, 10)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_build_and_export_times_each_step_and_reports_the_schedule(sample, tmp_path):
    imported = onnx_frontend.load_and_import(sample, None)
    tvm_target, _ = target.host_target()
    built = build.build_and_export(imported.mod, tvm_target, tmp_path / "out")
    assert built.path == tmp_path / "out" / "model.so" and built.path.is_file()
    assert set(built.seconds) == {"optimize", "build", "export"} and all(s > 0 for s in built.seconds.values())
    report = built.schedule
    assert report["layout"] == "NHWC" and report["rule"] == schedule.RULE_VERSION
    assert report["functions"] == sum(report["by_kind"].values()) > 5
    assert report["by_kind"]["tiled"] >= 5  # the sample's convolutions and its Gemm
    assert report["unscheduled"] == [] and report["naive"] == [] and report["failures"] == []


def test_layouts_differ_in_the_convolutions_and_each_compile_is_deterministic(sample):
    """NCHW skips ConvertLayout: no kernel transposes data for the convolutions."""
    import tvm

    imported = onnx_frontend.load_and_import(sample, None)
    tvm_target, _ = target.host_target()
    mods, reports = {}, {}
    for layout in ("NHWC", "NCHW", "NHWC"):
        mod, report = build.optimize(imported.mod, tvm_target, layout)
        assert report["layout"] == layout
        if layout in mods:
            tvm.ir.assert_structural_equal(mod, mods[layout])
            assert report == reports[layout]
        mods[layout], reports[layout] = mod, report
    names = {layout: " ".join(gv.name_hint for gv, _ in mod.functions_items()) for layout, mod in mods.items()}
    assert "transpose" in names["NHWC"] and "transpose" not in names["NCHW"]


def test_optimize_errors_are_server_compilation_errors(imported_and_target, monkeypatch):
    from agent.compile import schedule

    def failing(*args, **kwargs):
        raise RuntimeError("Check failed: a pass fell over")

    monkeypatch.setattr(schedule, "schedule_module", failing)
    with pytest.raises(ServerError) as excinfo:
        build.optimize(*imported_and_target)
    assert excinfo.value.reason == ("ServerError: CompilationError: TVM 0.27 failed while optimizing the model: "
                                    "Check failed: a pass fell over")


@pytest.fixture
def imported_and_target(sample):
    imported = onnx_frontend.load_and_import(sample, None)
    return imported.mod, target.host_target()[0]


@pytest.mark.parametrize("error_name, keyword", [
    ("OpNotImplemented", "OperatorNotImplemented"),
    ("OpAttributeUnImplemented", "OperatorAttributeNotImplemented"),
    ("OpAttributeRequired", "OperatorAttributeRequired"),
    ("OpAttributeInvalid", "OperatorAttributeValueNotValid"),
])
def test_operator_errors_in_the_build_are_client_errors(imported_and_target, monkeypatch, error_name, keyword):
    import tvm

    def failing(*args, **kwargs):
        raise getattr(tvm.error, error_name)("topi.nn.conv2d: layout NCHW4c is not supported")

    monkeypatch.setattr(tvm, "compile", failing)
    with pytest.raises(ClientError) as excinfo:
        build.build(*imported_and_target)
    assert excinfo.value.keyword == keyword
    assert "layout NCHW4c is not supported" in excinfo.value.detail


def test_other_build_failures_are_server_compilation_errors(imported_and_target, monkeypatch):
    import tvm

    def failing(*args, **kwargs):
        raise tvm.error.InternalError("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                                      "InternalError: Check failed: shape op left unlowered")

    monkeypatch.setattr(tvm, "compile", failing)
    with pytest.raises(ServerError) as excinfo:
        build.build(*imported_and_target)
    assert excinfo.value.reason == ("ServerError: CompilationError: TVM 0.27 failed while building the model: "
                                    "InternalError: Check failed: shape op left unlowered")


def test_memory_errors_are_left_to_the_child(imported_and_target, monkeypatch):
    import tvm

    def failing(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(tvm, "compile", failing)
    with pytest.raises(MemoryError):
        build.build(*imported_and_target)


def test_export_without_a_c_compiler(imported_and_target, monkeypatch, tmp_path):
    from tvm.support import cc

    executable = build.build(*imported_and_target)
    monkeypatch.setattr(cc, "get_cc", lambda: None)
    with pytest.raises(ServerError, match="no C compiler found to link model.so; install gcc"):
        build.export(executable, tmp_path)


def test_a_squeeze_of_the_last_axis_compiles_in_nhwc(tmp_path):
    """TVM 0.27's ConvertLayout died with std::bad_alloc on squeeze(axis=-1) (PyTorch's
    x.squeeze(-1), silero-vad's decoder); optimize makes the axis positive first."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.compile.helpers import save

    weight = np.random.default_rng(3).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c"], ["m"], axes=[3], keepdims=1),
             helper.make_node("Squeeze", ["m", "last"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(weight, "w"),
                                           numpy_helper.from_array(np.array([-1], np.int64), "last")])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "squeeze.onnx")
    x = np.random.default_rng(4).random((1, 3, 8, 8), dtype=np.float32)
    got = runtime.load(compile_artifact(path, tmp_path / "artifact", layout="NHWC")).run({"x": x})
    assert got[0].shape == (1, 4, 8)
    np.testing.assert_allclose(got[0], onnxruntime_outputs(path, {"x": x})[0], rtol=1e-4, atol=1e-5)
