"""Small ONNX graphs and a compile helper shared by the compile, runtime and pipeline tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def tiny_model(op: str, inputs: dict[str, list], output_shape=None, *, attrs: dict | None = None,
               initializers: dict[str, np.ndarray] | None = None, opset: int = 17, extra_inputs=()):
    """A one-node graph: `op` over float32 inputs (name -> shape), output "y"."""
    from onnx import TensorProto, helper, numpy_helper

    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()]
    inits = [numpy_helper.from_array(a, n) for n, a in (initializers or {}).items()]
    node_inputs = list(inputs) + list(initializers or {}) + list(extra_inputs)
    node = helper.make_node(op, node_inputs, ["y"], **(attrs or {}))
    graph = helper.make_graph([node], "tiny", values, [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def save(model, path: Path) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def compile_artifact(onnx_path: Path, out_dir: Path, data_input_config: str | None = None,
                     layout: str = "NHWC", linkable: bool = True) -> Path:
    """What the pipeline's prepare + compile stages leave behind: model.so (model.tar of objects
    when not `linkable`, as for a cross-compiled target) + metadata.json."""
    from agent.compile import build, onnx_frontend, target

    imported = onnx_frontend.load_and_import(onnx_path, data_input_config)
    tvm_target, desc = target.host_target()
    build.build_and_export(imported.mod, tvm_target, out_dir, layout=layout, linkable=linkable)
    metadata = {"inputs": [s.to_dict() for s in imported.inputs],
                "outputs": [s.to_dict() for s in imported.outputs], "target": desc}
    (out_dir / "metadata.json").write_text(json.dumps(metadata))
    return out_dir


def onnxruntime_outputs(onnx_path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, feed)
