"""Small .tflite models the TFLite tests make themselves (no TensorFlow needed).

    float_classifier(path)   CONV_2D (3x3, relu) -> MEAN over H, W -> FULLY_CONNECTED -> SOFTMAX,
                             written with the flatbuffer builders of the `tflite` package
    int8_classifier(path)    the same model quantized to int8 (activations and weights, int8 input
                             and output) by TensorFlow Lite's own post-training quantizer, the
                             calibration wrapper ai-edge-litert ships (what TFLiteConverter calls
                             with a representative dataset)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT_SHAPE = (1, 16, 16, 3)
CHANNELS = 8
CLASSES = 5


def _vector(builder, start, values, prepend) -> int:
    start(builder, len(values))
    for value in reversed(values):
        prepend(value)
    return builder.EndVector()


def float_classifier(path: Path, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_float_classifier_bytes(seed))
    return path


def _float_classifier_bytes(seed: int) -> bytes:
    import importlib

    import flatbuffers
    from tflite.ActivationFunctionType import ActivationFunctionType
    from tflite.BuiltinOperator import BuiltinOperator
    from tflite.BuiltinOptions import BuiltinOptions
    from tflite.Padding import Padding
    from tflite.TensorType import TensorType

    # The package's __init__ exports the reader classes under the modules' names; the builder
    # functions live in the modules.
    (Buffer, Conv2DOptions, FullyConnectedOptions, Model, Operator, OperatorCode, ReducerOptions, SoftmaxOptions,
     SubGraph, Tensor) = (importlib.import_module(f"tflite.{name}") for name in (
        "Buffer", "Conv2DOptions", "FullyConnectedOptions", "Model", "Operator", "OperatorCode", "ReducerOptions",
        "SoftmaxOptions", "SubGraph", "Tensor"))

    rng = np.random.default_rng(seed)
    arrays = [None,  # buffer 0 is empty by convention
              rng.standard_normal((CHANNELS, 3, 3, 3)).astype(np.float32) * 0.5,   # OHWI
              rng.standard_normal(CHANNELS).astype(np.float32) * 0.1,
              np.array([1, 2], dtype=np.int32),                                     # MEAN axes
              rng.standard_normal((CLASSES, CHANNELS)).astype(np.float32) * 0.5,
              rng.standard_normal(CLASSES).astype(np.float32) * 0.1]
    b = flatbuffers.Builder(4096)
    buffers = []
    for array in arrays:
        data = None if array is None else b.CreateByteVector(array.tobytes())
        Buffer.BufferStart(b)
        if data is not None:
            Buffer.BufferAddData(b, data)
        buffers.append(Buffer.BufferEnd(b))
    # (name, shape, type, buffer)
    tensors_spec = [("input", INPUT_SHAPE, TensorType.FLOAT32, 0),
                    ("conv_w", (CHANNELS, 3, 3, 3), TensorType.FLOAT32, 1),
                    ("conv_b", (CHANNELS,), TensorType.FLOAT32, 2),
                    ("conv", (1, 16, 16, CHANNELS), TensorType.FLOAT32, 0),
                    ("axes", (2,), TensorType.INT32, 3),
                    ("pooled", (1, CHANNELS), TensorType.FLOAT32, 0),
                    ("fc_w", (CLASSES, CHANNELS), TensorType.FLOAT32, 4),
                    ("fc_b", (CLASSES,), TensorType.FLOAT32, 5),
                    ("logits", (1, CLASSES), TensorType.FLOAT32, 0),
                    ("probabilities", (1, CLASSES), TensorType.FLOAT32, 0)]
    tensors = []
    for name, shape, dtype, buffer in tensors_spec:
        name_offset = b.CreateString(name)
        shape_offset = _vector(b, Tensor.TensorStartShapeVector, list(shape), b.PrependInt32)
        Tensor.TensorStart(b)
        Tensor.TensorAddShape(b, shape_offset)
        Tensor.TensorAddType(b, dtype)
        Tensor.TensorAddBuffer(b, buffer)
        Tensor.TensorAddName(b, name_offset)
        tensors.append(Tensor.TensorEnd(b))

    Conv2DOptions.Conv2DOptionsStart(b)
    Conv2DOptions.Conv2DOptionsAddPadding(b, Padding.SAME)
    Conv2DOptions.Conv2DOptionsAddStrideW(b, 1)
    Conv2DOptions.Conv2DOptionsAddStrideH(b, 1)
    Conv2DOptions.Conv2DOptionsAddFusedActivationFunction(b, ActivationFunctionType.RELU)
    Conv2DOptions.Conv2DOptionsAddDilationWFactor(b, 1)
    Conv2DOptions.Conv2DOptionsAddDilationHFactor(b, 1)
    conv_options = Conv2DOptions.Conv2DOptionsEnd(b)
    ReducerOptions.ReducerOptionsStart(b)
    ReducerOptions.ReducerOptionsAddKeepDims(b, False)
    mean_options = ReducerOptions.ReducerOptionsEnd(b)
    FullyConnectedOptions.FullyConnectedOptionsStart(b)
    fc_options = FullyConnectedOptions.FullyConnectedOptionsEnd(b)
    SoftmaxOptions.SoftmaxOptionsStart(b)
    SoftmaxOptions.SoftmaxOptionsAddBeta(b, 1.0)
    softmax_options = SoftmaxOptions.SoftmaxOptionsEnd(b)

    ops, opts = BuiltinOperator, BuiltinOptions
    # (opcode index, inputs, outputs, options type, options)
    operators_spec = [(0, [0, 1, 2], [3], opts.Conv2DOptions, conv_options),
                      (1, [3, 4], [5], opts.ReducerOptions, mean_options),
                      (2, [5, 6, 7], [8], opts.FullyConnectedOptions, fc_options),
                      (3, [8], [9], opts.SoftmaxOptions, softmax_options)]
    operators = []
    for opcode, inputs, outputs, options_type, options in operators_spec:
        inputs_offset = _vector(b, Operator.OperatorStartInputsVector, inputs, b.PrependInt32)
        outputs_offset = _vector(b, Operator.OperatorStartOutputsVector, outputs, b.PrependInt32)
        Operator.OperatorStart(b)
        Operator.OperatorAddOpcodeIndex(b, opcode)
        Operator.OperatorAddInputs(b, inputs_offset)
        Operator.OperatorAddOutputs(b, outputs_offset)
        Operator.OperatorAddBuiltinOptionsType(b, options_type)
        Operator.OperatorAddBuiltinOptions(b, options)
        operators.append(Operator.OperatorEnd(b))
    codes = []
    for code in (ops.CONV_2D, ops.MEAN, ops.FULLY_CONNECTED, ops.SOFTMAX):
        OperatorCode.OperatorCodeStart(b)
        OperatorCode.OperatorCodeAddDeprecatedBuiltinCode(b, code)
        OperatorCode.OperatorCodeAddBuiltinCode(b, code)
        OperatorCode.OperatorCodeAddVersion(b, 1)
        codes.append(OperatorCode.OperatorCodeEnd(b))

    tensors_offset = _vector(b, SubGraph.SubGraphStartTensorsVector, tensors, b.PrependUOffsetTRelative)
    inputs_offset = _vector(b, SubGraph.SubGraphStartInputsVector, [0], b.PrependInt32)
    outputs_offset = _vector(b, SubGraph.SubGraphStartOutputsVector, [9], b.PrependInt32)
    operators_offset = _vector(b, SubGraph.SubGraphStartOperatorsVector, operators, b.PrependUOffsetTRelative)
    name = b.CreateString("main")
    SubGraph.SubGraphStart(b)
    SubGraph.SubGraphAddTensors(b, tensors_offset)
    SubGraph.SubGraphAddInputs(b, inputs_offset)
    SubGraph.SubGraphAddOutputs(b, outputs_offset)
    SubGraph.SubGraphAddOperators(b, operators_offset)
    SubGraph.SubGraphAddName(b, name)
    subgraph = SubGraph.SubGraphEnd(b)

    codes_offset = _vector(b, Model.ModelStartOperatorCodesVector, codes, b.PrependUOffsetTRelative)
    subgraphs_offset = _vector(b, Model.ModelStartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
    buffers_offset = _vector(b, Model.ModelStartBuffersVector, buffers, b.PrependUOffsetTRelative)
    description = b.CreateString("neo-edge-agent test classifier")
    Model.ModelStart(b)
    Model.ModelAddVersion(b, 3)
    Model.ModelAddOperatorCodes(b, codes_offset)
    Model.ModelAddSubgraphs(b, subgraphs_offset)
    Model.ModelAddDescription(b, description)
    Model.ModelAddBuffers(b, buffers_offset)
    b.Finish(Model.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def int8_classifier(path: Path, seed: int = 0, samples: int = 16) -> Path:
    """float_classifier quantized to int8 by TensorFlow Lite's calibrator on random images in [0, 1)."""
    from ai_edge_litert import _pywrap_tensorflow_lite_calibration_wrapper as calibration

    float_model = _float_classifier_bytes(seed)  # the wrapper reads this buffer in place: keep it alive
    calibrator = calibration.CalibrationWrapper(float_model, [], [])
    rng = np.random.default_rng(seed)
    calibrator.Prepare()
    for _ in range(samples):
        calibrator.FeedTensor([rng.random(INPUT_SHAPE, dtype=np.float32)])
    int8 = np.dtype(np.int8).num
    # input type, output type, allow float, activations type, bias type, disable per-channel,
    # disable per-channel for dense layers (tf.lite's calibrator.py passes these in this order)
    quantized = calibrator.QuantizeModel(int8, int8, False, int8, np.dtype(np.int32).num, False, False)
    del float_model
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(quantized))
    return path
