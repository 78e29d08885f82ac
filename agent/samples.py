"""A small, real-looking ONNX classifier for the demo and the tests.

The graph is what a mobile CNN export looks like, at toy scale (about 40k weights, compiles
in seconds):

    input [N,3,64,64] -> conv3x3/2-BN-ReLU (16) -> residual block (16)
      -> residual block with a strided 1x1 shortcut (32) -> depthwise 3x3 + pointwise 1x1 (64)
      -> GlobalAveragePool -> Flatten -> Gemm (10) = "logits" -> Softmax = "probabilities"

The batch dim is the dynamic "N", so a request without DataInputConfig exercises shape
derivation, and the two outputs exercise output ordering. Weights are drawn from a fixed
seed, so every run builds the same bytes. Opset 17.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

INPUT_NAME = "input"
INPUT_SHAPE = ("N", 3, 64, 64)
OUTPUT_NAMES = ("logits", "probabilities")
NUM_CLASSES = 10
OPSET = 17
SEED = 20261101


class _GraphBuilder:
    """Just enough of a layer API to write the network as a sequence of blocks."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.initializers: list = []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def _weight(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(self, x: str, cin: int, cout: int, kernel: int, stride: int = 1, group: int = 1) -> str:
        from onnx import helper

        name = self._name("conv")
        fan_in = cin // group * kernel * kernel
        w = self.rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin // group, kernel, kernel))
        pad = kernel // 2
        self.nodes.append(helper.make_node(
            "Conv", [x, self._weight(f"{name}.weight", w)], [name], name=name,
            kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4, group=group))
        return name

    def bn(self, x: str, channels: int) -> str:
        from onnx import helper

        name = self._name("bn")
        params = [
            self._weight(f"{name}.scale", self.rng.uniform(0.8, 1.2, channels)),
            self._weight(f"{name}.bias", self.rng.normal(0, 0.1, channels)),
            self._weight(f"{name}.mean", self.rng.normal(0, 0.1, channels)),
            self._weight(f"{name}.var", self.rng.uniform(0.5, 1.5, channels)),
        ]
        self.nodes.append(helper.make_node("BatchNormalization", [x, *params], [name], name=name, epsilon=1e-5))
        return name

    def op(self, kind: str, *inputs: str, **attrs) -> str:
        from onnx import helper

        name = self._name(kind.lower())
        self.nodes.append(helper.make_node(kind, list(inputs), [name], name=name, **attrs))
        return name

    def conv_bn(self, x: str, cin: int, cout: int, kernel: int, stride: int = 1, group: int = 1,
                relu: bool = True) -> str:
        y = self.bn(self.conv(x, cin, cout, kernel, stride, group), cout)
        return self.op("Relu", y) if relu else y

    def residual(self, x: str, cin: int, cout: int, stride: int) -> str:
        y = self.conv_bn(x, cin, cout, 3, stride)
        y = self.conv_bn(y, cout, cout, 3, relu=False)
        shortcut = x if stride == 1 and cin == cout else self.conv_bn(x, cin, cout, 1, stride, relu=False)
        return self.op("Relu", self.op("Add", y, shortcut))


def build_sample_model(seed: int = SEED):
    """The sample classifier as an onnx.ModelProto (checked by onnx.checker)."""
    import onnx
    from onnx import TensorProto, helper

    g = _GraphBuilder(seed)
    x = g.conv_bn(INPUT_NAME, 3, 16, 3, stride=2)  # 32x32
    x = g.residual(x, 16, 16, stride=1)
    x = g.residual(x, 16, 32, stride=2)  # 16x16
    x = g.conv_bn(x, 32, 32, 3, group=32)  # depthwise
    x = g.conv_bn(x, 32, 64, 1)  # pointwise
    x = g.op("Flatten", g.op("GlobalAveragePool", x), axis=1)
    w = g._weight("classifier.weight", g.rng.normal(0, np.sqrt(1.0 / 64), (NUM_CLASSES, 64)))
    b = g._weight("classifier.bias", g.rng.normal(0, 0.01, NUM_CLASSES))
    g.nodes.append(helper.make_node("Gemm", [x, w, b], [OUTPUT_NAMES[0]], name="classifier", transB=1))
    g.nodes.append(helper.make_node("Softmax", [OUTPUT_NAMES[0]], [OUTPUT_NAMES[1]], name="softmax", axis=1))

    graph = helper.make_graph(
        g.nodes, "sample_cnn",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", NUM_CLASSES]) for name in OUTPUT_NAMES],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="neo-edge-agent.samples")
    model.ir_version = 8  # what onnxruntime releases of the last years all read
    onnx.checker.check_model(model, full_check=True)
    return model


def make_sample_model(path: Path) -> Path:
    """Write the sample classifier to `path` (an .onnx file); returns the path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_sample_model(), str(path))
    return path


def make_sample_archive(directory: Path, name: str = "model") -> Path:
    """`directory/<name>.tar.gz` holding `<name>.onnx`: the form Neo's InputConfig.S3Uri takes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = make_sample_model(directory / f"{name}.onnx")
    archive = directory / f"{name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(onnx_path, arcname=onnx_path.name)
    return archive
