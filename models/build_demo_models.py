#!/usr/bin/env python3
"""Build Gantry's demo ONNX models and ONNX test fixtures.

What it builds (paths are relative to the output root, by default the repo root):

  Demo models (served by `gantry` out of `models/`):
    models/unet-seg/model.onnx          UNet-style segmentation demo:
                                        image f32[batch,3,128,128] -> mask f32[batch,1,128,128]
                                        (2-level encoder/decoder, nearest Resize upsampling,
                                        skip Concats, 1x1 conv + Sigmoid; untrained He-init
                                        weights from a fixed seed)
    models/tiny-classifier/model.onnx   features f32[batch,64] -> Gemm+ReLU -> Gemm
                                        -> logits f32[batch,10] (the per-request overhead case)

  Test fixtures (used by the Rust tests, under `tests/fixtures/models/`):
    dtypes/model.onnx         six [batch,2] inputs x_fp32/x_fp64/x_i32/x_i64/x_u8/x_bool ->
                              y_* of the same dtype: x*2 (floats, ints), x+1 (uint8), Not(x) (bool)
    fixed/model.onnx          x f32[1,4] (fixed shape, served unbatched) -> y = x*3
    dynamic-image/model.onnx  image f32[batch,1,height,width] -> image_out = image*2 + 1
    scalar-in/model.onnx      x f32[] (scalar, served unbatched) -> y = x + 1
    nonfinite/model.onnx      x f32[batch,4] -> y = x / 0 (f32), y64 = double(x) / 0 (f64):
                              +Inf, -Inf and NaN from finite inputs
    half-and-text/model.onnx  x_fp16/x_bf16 [batch,2] -> y_* = x*2 (through float32);
                              x_str string [batch,2] -> y_str (the same strings)
    accumulator/model.onnx    a sequence model: sum = acc_in + x, acc_out its implicit state,
                              the control inputs START/END/READY/CORRID echoed

  Every model folder also gets a `model.toml` with its serving settings.

  Stand-ins in Triton's example repository (`tests/fixtures/triton_repository/`,
  the rest of which is vendored from Triton):
    densenet_onnx/1/model.onnx    data_0 f32[1,3,224,224] -> fc6_1 f32[1,1000,1,1]
                                  (the model zoo's DenseNet's tensors; pool + 1x1 conv)
    simple_identity/1/model.onnx  INPUT0 string[batch,n] -> OUTPUT0 (Identity), with
                                  its config.pbtxt (a Python-backend model in Triton's)
  and `tests/fixtures/triton_optional/offset/` (config.pbtxt + 1/model.onnx): y = x + bias,
  bias an initializer a client may override (an optional input), [[10, 20, 30, 40]];
  and `tests/fixtures/triton_dyna_sequence/simple_string_dyna_sequence/` (Triton's QA
  model, a custom backend there): INPUT + the running sum in implicit state, plus the
  string CORRID read as a number on a sequence's last request.

All graphs are written directly with `onnx.helper` (opset 17, IR version 8, which
ONNX Runtime 1.31 loads). Random weights come from fixed numpy seeds, so reruns
produce byte-identical files.

Requirements:  pip install -r models/requirements.txt   (onnx, numpy; onnxruntime is not needed)
Usage:         python models/build_demo_models.py [--out ROOT]
Run time:      about one second (well under 5 s); the output is about 135 KB in total.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version that shipped with opset 17 (ONNX 1.12); ONNX Runtime 1.31 loads it.
PRODUCER = "gantry-build-demo-models"
PRODUCER_VERSION = "1"

# UNet channel widths at full, 1/2 and 1/4 resolution. Tuned so that one 128x128 item
# takes roughly 2-6 ms with ONNX Runtime CPU, intra_op_num_threads=1.
UNET_WIDTHS = (8, 16, 32)
UNET_SEED = 20240601
TINY_SEED = 20240602


# --------------------------------------------------------------------------- helpers


def _model(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # SerializeToString is deterministic for a given proto (no maps are used here).
    path.write_bytes(model.SerializeToString())


def _write_toml(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _const(name: str, value, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name=name)


# --------------------------------------------------------------------------- unet-seg


class _GraphBuilder:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def conv(self, x: str, cin: int, cout: int, k: int, relu: bool = True) -> str:
        name = self._name("conv")
        fan_in = cin * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(cout, cin, k, k)).astype(np.float32)
        b = self.rng.normal(0.0, 0.01, size=(cout,)).astype(np.float32)
        self.inits.append(numpy_helper.from_array(w, f"{name}.weight"))
        self.inits.append(numpy_helper.from_array(b, f"{name}.bias"))
        pad = k // 2
        out = f"{name}_out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.weight", f"{name}.bias"],
                [out],
                name=name,
                kernel_shape=[k, k],
                pads=[pad, pad, pad, pad],
                strides=[1, 1],
            )
        )
        if not relu:
            return out
        relu_out = f"{name}_relu"
        self.nodes.append(helper.make_node("Relu", [out], [relu_out], name=f"{name}_relu"))
        return relu_out

    def block(self, x: str, cin: int, cout: int) -> str:
        x = self.conv(x, cin, cout, 3)
        return self.conv(x, cout, cout, 3)

    def maxpool(self, x: str) -> str:
        name = self._name("pool")
        self.nodes.append(
            helper.make_node("MaxPool", [x], [name], name=name, kernel_shape=[2, 2], strides=[2, 2])
        )
        return name

    def upsample(self, x: str) -> str:
        name = self._name("up")
        if not any(i.name == "up_scales" for i in self.inits):
            self.inits.append(_const("up_scales", [1.0, 1.0, 2.0, 2.0], np.float32))
        self.nodes.append(
            helper.make_node(
                "Resize",
                [x, "", "up_scales"],
                [name],
                name=name,
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
        )
        return name

    def concat(self, a: str, b: str) -> str:
        name = self._name("cat")
        self.nodes.append(helper.make_node("Concat", [a, b], [name], name=name, axis=1))
        return name


def build_unet_seg() -> onnx.ModelProto:
    c1, c2, c3 = UNET_WIDTHS
    g = _GraphBuilder(np.random.default_rng(UNET_SEED))

    e1 = g.block("image", 3, c1)  # [N,c1,128,128]
    e2 = g.block(g.maxpool(e1), c1, c2)  # [N,c2,64,64]
    bott = g.block(g.maxpool(e2), c2, c3)  # [N,c3,32,32]
    d2 = g.block(g.concat(g.upsample(bott), e2), c3 + c2, c2)  # [N,c2,64,64]
    d1 = g.block(g.concat(g.upsample(d2), e1), c2 + c1, c1)  # [N,c1,128,128]
    logits = g.conv(d1, c1, 1, 1, relu=False)  # [N,1,128,128]
    g.nodes.append(helper.make_node("Sigmoid", [logits], ["mask"], name="sigmoid"))

    graph = helper.make_graph(
        g.nodes,
        "unet_seg",
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 128, 128])],
        outputs=[helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 128, 128])],
        initializer=g.inits,
    )
    return _model(graph, "UNet-style segmentation demo (untrained, He-init weights, fixed seed).")


UNET_TOML = """\
# UNet-style segmentation demo: N x 3 x 128 x 128 image -> N x 1 x 128 x 128 mask.
# Input `image` float32 [batch,3,128,128]; output `mask` float32 [batch,1,128,128]
# holding per-pixel sigmoid probabilities. Weights are random (a demo, not trained).
# About a few ms per item on one CPU thread, so batching requests pays off.

# Number of independent ONNX Runtime sessions serving this model.
replicas = 1
# Largest number of requests fused into one batched run.
max_batch_size = 8
# How long the batcher waits to fill a batch before running what it has.
batch_window_ms = 100
# Memory each replica reserves from its device's budget: the weights and a
# full batch's activations. On a GPU the CUDA arena is limited to it.
memory_mb = 512
"""


# --------------------------------------------------------------------------- tiny-classifier


def build_tiny_classifier() -> onnx.ModelProto:
    rng = np.random.default_rng(TINY_SEED)
    w1 = rng.normal(0.0, np.sqrt(2.0 / 64), size=(64, 32)).astype(np.float32)
    b1 = rng.normal(0.0, 0.01, size=(32,)).astype(np.float32)
    w2 = rng.normal(0.0, np.sqrt(2.0 / 32), size=(32, 10)).astype(np.float32)
    b2 = rng.normal(0.0, 0.01, size=(10,)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["features", "fc1.weight", "fc1.bias"], ["fc1_out"], name="fc1"),
        helper.make_node("Relu", ["fc1_out"], ["fc1_relu"], name="relu1"),
        helper.make_node("Gemm", ["fc1_relu", "fc2.weight", "fc2.bias"], ["logits"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 64])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            numpy_helper.from_array(w1, "fc1.weight"),
            numpy_helper.from_array(b1, "fc1.bias"),
            numpy_helper.from_array(w2, "fc2.weight"),
            numpy_helper.from_array(b2, "fc2.bias"),
        ],
    )
    return _model(graph, "Tiny MLP classifier: 64 features -> 10 logits (untrained).")


TINY_TOML = """\
# Tiny MLP classifier: N x 64 features -> N x 10 logits (Gemm+ReLU, Gemm).
# Input `features` float32 [batch,64]; output `logits` float32 [batch,10].
# A run takes microseconds, so this model measures the server's own per-request overhead.

# Number of independent ONNX Runtime sessions serving this model.
replicas = 1
# Largest number of requests fused into one batched run.
max_batch_size = 32
# Short window: waiting long would cost far more than the model itself.
batch_window_ms = 2
"""


# --------------------------------------------------------------------------- test fixtures


def build_dtypes() -> onnx.ModelProto:
    specs = [
        # (suffix, elem type, numpy dtype, op, constant)
        ("fp32", TensorProto.FLOAT, np.float32, "Mul", 2),
        ("fp64", TensorProto.DOUBLE, np.float64, "Mul", 2),
        ("i32", TensorProto.INT32, np.int32, "Mul", 2),
        ("i64", TensorProto.INT64, np.int64, "Mul", 2),
        ("u8", TensorProto.UINT8, np.uint8, "Add", 1),
        ("bool", TensorProto.BOOL, np.bool_, "Not", None),
    ]
    nodes, inits, inputs, outputs = [], [], [], []
    for suffix, elem, dtype, op, c in specs:
        x, y = f"x_{suffix}", f"y_{suffix}"
        inputs.append(helper.make_tensor_value_info(x, elem, ["batch", 2]))
        outputs.append(helper.make_tensor_value_info(y, elem, ["batch", 2]))
        if op == "Not":
            nodes.append(helper.make_node("Not", [x], [y], name=f"not_{suffix}"))
        else:
            cname = f"c_{suffix}"
            inits.append(_const(cname, c, dtype))
            nodes.append(helper.make_node(op, [x, cname], [y], name=f"{op.lower()}_{suffix}"))
    graph = helper.make_graph(nodes, "dtypes", inputs, outputs, initializer=inits)
    return _model(graph, "Fixture: one input/output pair per supported dtype.")


def build_fixed() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "three"], ["y"], name="mul")],
        "fixed",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[_const("three", 3.0, np.float32)],
    )
    return _model(graph, "Fixture: fixed shape [1,4] (no batch dim), y = x*3.")


def build_dynamic_image() -> onnx.ModelProto:
    shape = ["batch", 1, "height", "width"]
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["image", "two"], ["scaled"], name="mul"),
            helper.make_node("Add", ["scaled", "one"], ["image_out"], name="add"),
        ],
        "dynamic_image",
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        outputs=[helper.make_tensor_value_info("image_out", TensorProto.FLOAT, shape)],
        initializer=[_const("two", 2.0, np.float32), _const("one", 1.0, np.float32)],
    )
    return _model(graph, "Fixture: symbolic batch/height/width, image_out = image*2 + 1.")


def build_scalar_in() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"], name="add")],
        "scalar_in",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        initializer=[_const("one", 1.0, np.float32)],
    )
    return _model(graph, "Fixture: scalar input (shape []), y = x + 1.")


def build_nonfinite() -> onnx.ModelProto:
    shape = ["batch", 4]
    graph = helper.make_graph(
        [
            helper.make_node("Div", ["x", "zero"], ["y"], name="div"),
            helper.make_node("Cast", ["x"], ["x64"], name="cast", to=TensorProto.DOUBLE),
            helper.make_node("Div", ["x64", "zero64"], ["y64"], name="div64"),
        ],
        "nonfinite",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        outputs=[
            helper.make_tensor_value_info("y", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("y64", TensorProto.DOUBLE, shape),
        ],
        initializer=[_const("zero", 0.0, np.float32), _const("zero64", 0.0, np.float64)],
    )
    return _model(graph, "Fixture: y = x / 0 in float32 and float64 (Inf, -Inf, NaN).")


def build_half_and_text() -> onnx.ModelProto:
    shape = ["batch", 2]
    nodes, inits, inputs, outputs = [], [_const("two", 2.0, np.float32)], [], []
    for suffix, elem in [("fp16", TensorProto.FLOAT16), ("bf16", TensorProto.BFLOAT16)]:
        x, y = f"x_{suffix}", f"y_{suffix}"
        inputs.append(helper.make_tensor_value_info(x, elem, shape))
        outputs.append(helper.make_tensor_value_info(y, elem, shape))
        nodes += [
            helper.make_node("Cast", [x], [f"{x}_f32"], name=f"up_{suffix}", to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{x}_f32", "two"], [f"{y}_f32"], name=f"mul_{suffix}"),
            helper.make_node("Cast", [f"{y}_f32"], [y], name=f"down_{suffix}", to=elem),
        ]
    inputs.append(helper.make_tensor_value_info("x_str", TensorProto.STRING, shape))
    outputs.append(helper.make_tensor_value_info("y_str", TensorProto.STRING, shape))
    nodes.append(helper.make_node("Identity", ["x_str"], ["y_str"], name="same_str"))
    graph = helper.make_graph(nodes, "half_and_text", inputs, outputs, initializer=inits)
    return _model(graph, "Fixture: FP16 and BF16 doubled (through float32), strings as they are.")


def build_accumulator() -> onnx.ModelProto:
    col = ["batch", 1]
    f32, i32, i64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info(name, elem, col)
        for name, elem in [
            ("x", f32), ("acc_in", f32), ("START", i32), ("END", i32), ("READY", i32),
            ("CORRID", i64),
        ]
    ]
    outputs = [
        helper.make_tensor_value_info(name, elem, col)
        for name, elem in [
            ("sum", f32), ("acc_out", f32), ("start_out", i32), ("end_out", i32),
            ("ready_out", i32), ("corrid_out", i64),
        ]
    ]
    nodes = [
        helper.make_node("Add", ["acc_in", "x"], ["sum"], name="add"),
        helper.make_node("Identity", ["sum"], ["acc_out"], name="keep"),
        helper.make_node("Identity", ["START"], ["start_out"], name="start"),
        helper.make_node("Identity", ["END"], ["end_out"], name="end"),
        helper.make_node("Identity", ["READY"], ["ready_out"], name="ready"),
        helper.make_node("Identity", ["CORRID"], ["corrid_out"], name="corrid"),
    ]
    graph = helper.make_graph(nodes, "accumulator", inputs, outputs)
    return _model(graph, "Fixture: a running sum kept in implicit state, controls echoed.")


ACCUMULATOR_TOML = """\
# Test fixture: a stateful running sum. x f32 [batch,1] -> sum = acc_in + x;
# acc_out (= sum) is the implicit state fed back as acc_in; the control
# inputs the server fills are echoed as start_out/end_out/ready_out/corrid_out.
max_batch_size = 8
batch_window_ms = 20

[sequence]
start = "START"
end = "END"
ready = "READY"
corrid = "CORRID"

[[sequence.state]]
input = "acc_in"
output = "acc_out"
"""


def build_densenet_stand_in() -> onnx.ModelProto:
    """Triton's example `densenet_onnx` comes from the ONNX model zoo (not in
    its repository): this stands in with the same tensors (data_0
    f32[1,3,224,224] -> fc6_1 f32[1,1000,1,1]): a global average pool and a
    1x1 convolution to 1000 scores, fixed random weights."""
    rng = np.random.default_rng(224)
    weights = rng.standard_normal((1000, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["data_0"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "w"], ["fc6_1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "densenet_onnx_stand_in",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, 1000, 1, 1])],
        [_const("w", weights, np.float32)],
    )
    return _model(graph, "Stand-in for Triton's example densenet_onnx: same tensors, untrained.")


def build_simple_identity() -> onnx.ModelProto:
    """Triton's example `simple_identity` (a Python-backend model there) in
    ONNX: INPUT0 string[batch,n] -> OUTPUT0, the same strings."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "simple_identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["batch", "n"])],
    )
    return _model(graph, "Triton's example simple_identity, as an ONNX Identity on strings.")


def build_offset() -> onnx.ModelProto:
    """y = x + bias, f32[batch,4]; bias is an initializer that is also a
    graph input ([[10, 20, 30, 40]], broadcast over the batch), so a
    caller may override it: an optional input in its config.pbtxt."""
    bias = _const("bias", np.array([[10, 20, 30, 40]], dtype=np.float32), np.float32)
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4])  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        "offset",
        [io("x"), io("bias")],
        [io("y")],
        [bias],
    )
    return _model(graph, "y = x + bias, bias an initializer a caller may override.")


OFFSET_CONFIG = """\
# Test fixture: y = x + bias; a request may leave bias out and get the
# model's own ([[10, 20, 30, 40]]).
backend: "onnxruntime"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 20000 }
input [
  { name: "x"  data_type: TYPE_FP32  dims: [ 4 ] },
  { name: "bias"  data_type: TYPE_FP32  dims: [ 4 ]  optional: true }
]
output [ { name: "y"  data_type: TYPE_FP32  dims: [ 4 ] } ]
"""


def build_simple_string_dyna_sequence() -> onnx.ModelProto:
    """Triton's QA model `simple_string_dyna_sequence` (a custom backend
    there) in ONNX, with the implicit state Triton's ONNX Runtime models
    use: OUTPUT = INPUT + OUTPUT_STATE's last value (0 at a sequence's
    start), plus the correlation id (a string, read as a number) on the
    sequence's last request. Tensors are int32[batch,1], CORRID string."""
    i32 = TensorProto.INT32
    io = lambda name, ty=i32: helper.make_tensor_value_info(name, ty, ["batch", 1])  # noqa: E731
    nodes = [
        helper.make_node("Add", ["INPUT", "INPUT_STATE"], ["sum"]),
        helper.make_node("Cast", ["CORRID"], ["corrid"], to=TensorProto.INT32),
        helper.make_node("Mul", ["corrid", "END"], ["at_end"]),
        helper.make_node("Add", ["sum", "at_end"], ["OUTPUT"]),
        helper.make_node("Identity", ["sum"], ["OUTPUT_STATE"]),
    ]
    graph = helper.make_graph(
        nodes,
        "simple_string_dyna_sequence",
        [io("INPUT"), io("START"), io("END"), io("READY"), io("CORRID", TensorProto.STRING), io("INPUT_STATE")],
        [io("OUTPUT"), io("OUTPUT_STATE")],
    )
    return _model(graph, "Triton's simple_string_dyna_sequence, in ONNX with implicit state.")


SIMPLE_STRING_DYNA_SEQUENCE_CONFIG = """\
# Triton's QA model simple_string_dyna_sequence (a custom backend in Triton)
# on ONNX Runtime: the running sum of INPUT in implicit state, plus the
# (string) correlation id on a sequence's last request.
name: "simple_string_dyna_sequence"
backend: "onnxruntime"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 10000000
  oldest { max_candidate_sequences: 1024 }
  control_input [
    { name: "START"  control [ { kind: CONTROL_SEQUENCE_START  int32_false_true: [ 0, 1 ] } ] },
    { name: "END"  control [ { kind: CONTROL_SEQUENCE_END  int32_false_true: [ 0, 1 ] } ] },
    { name: "READY"  control [ { kind: CONTROL_SEQUENCE_READY  int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID"  control [ { kind: CONTROL_SEQUENCE_CORRID  data_type: TYPE_STRING } ] }
  ]
  state [ { input_name: "INPUT_STATE"  output_name: "OUTPUT_STATE"  data_type: TYPE_INT32  dims: [ 1 ] } ]
}
input [ { name: "INPUT"  data_type: TYPE_INT32  dims: [ 1 ] } ]
output [ { name: "OUTPUT"  data_type: TYPE_INT32  dims: [ 1 ] } ]
"""


SIMPLE_IDENTITY_CONFIG = """\
# Triton's example simple_identity (a Python-backend model in Triton's
# repository) on ONNX Runtime: the same tensors.
name: "simple_identity"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0"  data_type: TYPE_STRING  dims: [ -1 ] } ]
output [ { name: "OUTPUT0"  data_type: TYPE_STRING  dims: [ -1 ] } ]
"""


def _fixture_toml(description: str) -> str:
    return f"""\
# Test fixture: {description}
max_batch_size = 8
batch_window_ms = 20
"""


# --------------------------------------------------------------------------- main


def build_all(root: Path) -> list[Path]:
    written: list[Path] = []

    def emit(folder: str, model: onnx.ModelProto, toml: str) -> None:
        d = root / folder
        _save(model, d / "model.onnx")
        _write_toml(d / "model.toml", toml)
        written.extend([d / "model.onnx", d / "model.toml"])

    emit("models/unet-seg", build_unet_seg(), UNET_TOML)
    emit("models/tiny-classifier", build_tiny_classifier(), TINY_TOML)

    fx = "tests/fixtures/models"
    emit(
        f"{fx}/dtypes",
        build_dtypes(),
        _fixture_toml(
            "x_fp32/x_fp64/x_i32/x_i64/x_u8/x_bool [batch,2] -> y_* (x*2; u8: x+1; bool: Not x)."
        ),
    )
    emit(
        f"{fx}/fixed",
        build_fixed(),
        _fixture_toml("x float32 fixed [1,4] -> y = x*3 (no dynamic batch dim: served unbatched)."),
    )
    emit(
        f"{fx}/dynamic-image",
        build_dynamic_image(),
        _fixture_toml(
            "image float32 [batch,1,height,width] -> image_out = image*2 + 1"
            " (different H/W must not share a batch)."
        ),
    )
    emit(
        f"{fx}/scalar-in",
        build_scalar_in(),
        _fixture_toml("x float32 scalar [] -> y = x + 1 (no batch dim: served unbatched)."),
    )
    emit(
        f"{fx}/nonfinite",
        build_nonfinite(),
        _fixture_toml("x float32 [batch,4] -> y = x / 0 (float32), y64 = x / 0 (float64)."),
    )
    emit(
        f"{fx}/half-and-text",
        build_half_and_text(),
        _fixture_toml(
            "x_fp16/x_bf16 [batch,2] -> y_* = x*2 (computed in float32);"
            " x_str string [batch,2] -> y_str = x_str."
        ),
    )
    emit(f"{fx}/accumulator", build_accumulator(), ACCUMULATOR_TOML)

    # Triton's example repository (tests/fixtures/triton_repository/, the
    # rest vendored from Triton): the models it does not hold as ONNX.
    triton = root / "tests/fixtures/triton_repository"
    for folder, model in [
        ("densenet_onnx/1", build_densenet_stand_in()),
        ("simple_identity/1", build_simple_identity()),
    ]:
        _save(model, triton / folder / "model.onnx")
        written.append(triton / folder / "model.onnx")
    _write_toml(triton / "simple_identity/config.pbtxt", SIMPLE_IDENTITY_CONFIG)
    written.append(triton / "simple_identity/config.pbtxt")
    # Triton's sequence clients' `-d` runs also use a model Triton's example
    # repository does not hold: in a repository of its own (the model
    # control client counts the example repository's seven).
    dyna = root / "tests/fixtures/triton_dyna_sequence/simple_string_dyna_sequence"
    _save(build_simple_string_dyna_sequence(), dyna / "1/model.onnx")
    _write_toml(dyna / "config.pbtxt", SIMPLE_STRING_DYNA_SEQUENCE_CONFIG)
    written.extend([dyna / "1/model.onnx", dyna / "config.pbtxt"])
    offset = root / "tests/fixtures/triton_optional/offset"
    _save(build_offset(), offset / "1/model.onnx")
    _write_toml(offset / "config.pbtxt", OFFSET_CONFIG)
    written.extend([offset / "1/model.onnx", offset / "config.pbtxt"])
    return written


def main() -> None:
    default_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=default_root,
        help=f"output root (repo root); default: {default_root}",
    )
    args = parser.parse_args()
    root = args.out.resolve()
    for path in build_all(root):
        print(f"wrote {path.relative_to(root)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
