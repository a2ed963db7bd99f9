"""Writes a model repository of twelve MLPs (64 -> h -> h -> 10, FP32) whose
files are 7 to 39 MB, each with one replica: the repository
`load-tests/footprints.sh` measures. With --negligible, the same twelve
(names, inputs, outputs, settings) with 8 hidden units (about 3 KB of
weights each): `load-tests/trace.sh` serves it to measure the process's
memory beside the models. Usage: mlp_repository.py DIR [--negligible]"""
import os
import sys

import numpy as np
import onnx
from onnx import helper, TensorProto, numpy_helper
out = sys.argv[1]
rng = np.random.default_rng(7)
sizes_mb = [7, 10, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39]
for i, mb in enumerate(sizes_mb):
    # 64 -> h -> h -> 10, weights ~ 4*(64h + h*h + 10h) bytes
    h = int((-(74) + (74**2 + 4 * mb * 1024 * 1024 / 4) ** 0.5) / 2)
    if "--negligible" in sys.argv[2:]:
        h = 8
    w1 = rng.standard_normal((64, h), dtype=np.float32) * 0.05
    w2 = rng.standard_normal((h, h), dtype=np.float32) * 0.05
    w3 = rng.standard_normal((h, 10), dtype=np.float32) * 0.05
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(w3, "w3")]
    nodes = [helper.make_node("MatMul", ["features", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "w2"], ["c"]), helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("MatMul", ["d", "w3"], ["logits"])]
    g = helper.make_graph(nodes, f"mlp{i}", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]); m.ir_version = 8
    d = os.path.join(out, f"mlp-{i:02d}"); os.makedirs(d, exist_ok=True)
    onnx.save(m, os.path.join(d, "model.onnx"))
    open(os.path.join(d, "model.toml"), "w").write("replicas = 1\nmax_batch_size = 16\n")
print("ok")
