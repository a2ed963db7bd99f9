"""ONNX Runtime helpers the training scripts share: a single-threaded CPU
session on an exported model, and its latency per item."""

from __future__ import annotations

import time

import numpy as np
import onnx


def ort_session(model: onnx.ModelProto, threads: int = 1):
    """A CPU session on `model` with `threads` intra-op threads (what a replica uses)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_latency_ms(sess, input_name: str, x: np.ndarray, reps: int) -> float:
    """Mean milliseconds per item of running `x` (a batch) as `input_name`, after 3 warmups."""
    for _ in range(3):
        sess.run(None, {input_name: x})
    t = time.perf_counter()
    for _ in range(reps):
        sess.run(None, {input_name: x})
    return (time.perf_counter() - t) / reps / x.shape[0] * 1000.0
