"""Evaluates the committed trained demo models on held-out synthetic data.

Runs the exported `models/spheroid-seg/model.onnx` and `models/night-calls/model.onnx`
with ONNX Runtime (one CPU thread, as a replica runs them) on data the training scripts
never saw: the held-out seed each training script reports, and a second fresh seed.
Needs only numpy and onnxruntime (both pinned in models/requirements-train.txt):

    python models/evaluate_demo_models.py            # about 20 s on 2 cores

Exits non-zero when spheroid-seg's mean IoU is below 0.85 or night-calls' accuracy
below 95%.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from night_calls_data import CLASSES, make_clip  # noqa: E402
from spheroid_data import make_sample  # noqa: E402

# The held-out seeds of train_spheroid_seg.py and train_night_calls.py, then one
# neither script uses.
SPHEROID_SEEDS = (90210, 777001)
CALL_SEEDS = (4321, 777002)
N_IMAGES = 300
CLIPS_PER_CLASS = 200
SIZE, MEAN, STD = 128, 0.5, 0.25


def session(model: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(HERE / model / "model.onnx"), options,
                                providers=["CPUExecutionProvider"])


def spheroid_iou(sess: ort.InferenceSession, seed: int) -> float:
    rng = np.random.default_rng(seed)
    images, truths = zip(*(make_sample(rng, SIZE, SIZE, scale=1.0) for _ in range(N_IMAGES)))
    x = ((np.stack(images)[:, None] - MEAN) / STD).astype(np.float32)
    truth = np.stack(truths)[:, None] > 0.5
    prob = np.concatenate([sess.run(None, {"image": x[i:i + 50]})[0] for i in range(0, N_IMAGES, 50)])
    pred = prob >= 0.5
    inter = (pred & truth).reshape(N_IMAGES, -1).sum(1)
    union = (pred | truth).reshape(N_IMAGES, -1).sum(1)
    return float(np.mean(np.where(union == 0, 1.0, inter / np.maximum(union, 1))))


def calls_accuracy(sess: ort.InferenceSession, seed: int) -> float:
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(len(CLASSES)), CLIPS_PER_CLASS)
    waves = np.stack([make_clip(rng, CLASSES[i]) for i in labels]).astype(np.float32)
    logits = np.concatenate([sess.run(None, {"waveform": waves[i:i + 100]})[0]
                             for i in range(0, len(labels), 100)])
    return float(np.mean(logits.argmax(1) == labels))


def main() -> None:
    ok = True
    seg = session("spheroid-seg")
    for seed in SPHEROID_SEEDS:
        iou = spheroid_iou(seg, seed)
        ok &= iou >= 0.85
        print(f"spheroid-seg  seed {seed:6d}: mean IoU {iou:.4f} over {N_IMAGES} images")
    calls = session("night-calls")
    for seed in CALL_SEEDS:
        accuracy = calls_accuracy(calls, seed)
        ok &= accuracy >= 0.95
        print(f"night-calls   seed {seed:6d}: accuracy {accuracy:.4f} over "
              f"{CLIPS_PER_CLASS * len(CLASSES)} clips")
    if not ok:
        sys.exit("below target: spheroid-seg needs mean IoU >= 0.85, night-calls accuracy >= 0.95")


if __name__ == "__main__":
    main()
