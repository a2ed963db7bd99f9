"""Writes the repository `make bench-slo` (load-tests/slo.sh) serves:
`mlp` (64 -> 2048 -> 2048 -> 2048 -> 10, FP32, about 33 MB: compute-bound,
small JSON bodies) with `max_batch_size = 16`, and a copy of the demo
`unet-seg` with its own model.toml; with TARGET_MS each model.toml also sets
`latency_target_ms`; the environment's MODEL_SETTINGS (model.toml lines,
e.g. "replicas = 2" and "intra_op_threads = 1") go into both. Usage:
slo_repository.py DIR [TARGET_MS]"""
import os
import shutil
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

out = sys.argv[1]
target = f"latency_target_ms = {sys.argv[2]}\n" if len(sys.argv) > 2 else ""
extra = os.environ.get("MODEL_SETTINGS", "").strip()
target += extra + "\n" if extra else ""
rng = np.random.default_rng(7)
widths = [64, 2048, 2048, 2048, 10]
nodes, inits, x = [], [], "features"
for i, (a, b) in enumerate(zip(widths, widths[1:])):
    inits.append(numpy_helper.from_array(
        (rng.standard_normal((a, b), dtype=np.float32) / np.sqrt(a)).astype(np.float32), f"w{i}"))
    last = i == len(widths) - 2
    y = "logits" if last else f"h{i}"
    nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [y if last else f"m{i}"]))
    if not last:
        nodes.append(helper.make_node("Relu", [f"m{i}"], [y]))
    x = y
graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
os.makedirs(f"{out}/mlp", exist_ok=True)
save(model, f"{out}/mlp/model.onnx")
open(f"{out}/mlp/model.toml", "w").write("max_batch_size = 16\n" + target)
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
os.makedirs(f"{out}/unet-seg", exist_ok=True)
shutil.copy(f"{root}/models/unet-seg/model.onnx", f"{out}/unet-seg/model.onnx")
open(f"{out}/unet-seg/model.toml", "w").write("max_batch_size = 8\n" + target)
