#!/usr/bin/env python3
"""Write the media test fixtures (images and audio) for Gantry's end-to-end tests.

Writes into tests/fixtures/media/ (relative to --root, by default the repository root),
deterministically (fixed seeds), about 0.7 MB in all:

  spheroids.png          synthetic spheroid image, 192x160 (width x height), 8-bit grey
  spheroids-truth.png    its ground-truth mask, 8-bit grey, 0 / 255
  spheroids.tiff         the same image as 16-bit grey TIFF (round(x*65535)), uncompressed
  spheroids.jpg          the same image as RGB JPEG, quality 95 (grey in all 3 channels)
  spheroids.webp         the same image as lossless WebP (RGB)
  call-<label>.wav       one clip per night-calls class: 16 kHz mono 16-bit PCM, 1 s
  call-owl-hoot.flac     the owl-hoot clip as FLAC (16-bit)
  call-owl-hoot.mp3      the owl-hoot clip as MP3 (16 kHz mono)
  call-bird-chirp-44k-stereo.wav   the bird-chirp clip resampled to 44.1 kHz, 2 channels
                                   (right = 0.8 x left), 16-bit PCM
  call-cricket-trill-f32.wav       the cricket-trill clip as 32-bit float WAV

Seeds are chosen so that the committed demo models (models/spheroid-seg/model.onnx and
models/night-calls/model.onnx, which must exist) handle each file the way the server
does, and the script checks that with ONNX Runtime:
  * image: decode -> grey in [0,1] -> resize to 128x128 (bilinear) -> (x-0.5)/0.25 ->
    model -> mask resized back to 192x160 (bilinear) -> >= 0.5; IoU against the truth
    must be >= 0.85 for every image format, with both an antialiased (PIL-style,
    support-scaled triangle) and a plain (sample-point) bilinear resize;
  * audio: decode -> mono -> 16 kHz -> cut / zero-pad to 16000 samples -> model ->
    softmax; the right label must win with probability >= 0.9, also with the MP3 clip
    shifted by typical decoder delays and with the 44.1 kHz clip resampled two ways.

Requirements:  pip install -r models/requirements-train.txt
Usage:         python models/make_media_fixtures.py [--root ROOT]
Run time:      about 2 seconds on a 2-core CPU. Reruns write byte-identical files.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf
from PIL import Image
from scipy.signal import resample_poly

sys.path.insert(0, str(Path(__file__).resolve().parent))
from night_calls_data import CLASSES, make_clip  # noqa: E402
from spheroid_data import make_sample  # noqa: E402

IMG_W, IMG_H, NET = 192, 160, 128
IMG_SEED0 = 3000  # first seed tried for the spheroid image
AUDIO_SEED0 = 7000  # first seed tried for each audio class (+ 1000 * class index)
MIN_IOU, MIN_PROB = 0.85, 0.9
MARGIN_IOU, MARGIN_PROB = 0.9, 0.97  # stricter targets used when choosing seeds


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- images


def resize_pil(a: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bilinear resize, antialiased when shrinking (PIL's BILINEAR on a float image)."""
    return np.asarray(Image.fromarray(a.astype(np.float32)).resize((w, h), Image.BILINEAR))


def resize_plain(a: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bilinear interpolation at pixel centres, no antialiasing (OpenCV INTER_LINEAR style)."""
    def coords(n_out, n_in):
        c = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(c).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), c - i0
    y0, y1, fy = coords(h, a.shape[0])
    x0, x1, fx = coords(w, a.shape[1])
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bot = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return (top * (1 - fy)[:, None] + bot * fy[:, None]).astype(np.float32)


def segment(sess, grey: np.ndarray, resize) -> np.ndarray:
    """grey [H,W] in [0,1] -> bool mask [H,W], the server's way."""
    x = (resize(grey, NET, NET) - 0.5) / 0.25
    prob = sess.run(None, {"image": x[None, None].astype(np.float32)})[0][0, 0]
    return resize(prob, grey.shape[1], grey.shape[0]) >= 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def load_grey(path: Path) -> np.ndarray:
    """Decodes an image file to grey float [0,1] (RGB -> luma, 16-bit / 65535)."""
    im = Image.open(path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(im, dtype=np.float32) / 65535.0
    if im.mode != "L":
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
        return (rgb @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0
    return np.asarray(im, dtype=np.float32) / 255.0


def write_images(out: Path, sess) -> list[str]:
    for seed in range(IMG_SEED0, IMG_SEED0 + 200):
        img, mask = make_sample(np.random.default_rng(seed), IMG_H, IMG_W)
        cover = mask.mean()
        if not 0.15 <= cover <= 0.4:
            continue
        if min(iou(segment(sess, img, r), mask) for r in (resize_pil, resize_plain)) >= MARGIN_IOU:
            break
    else:
        sys.exit("no spheroid image seed met the IoU target")
    print(f"spheroid image: seed {seed}, foreground {cover:.1%}")
    g8 = np.round(img * 255).astype(np.uint8)
    Image.fromarray(g8).save(out / "spheroids.png", optimize=True)
    Image.fromarray((mask * 255).astype(np.uint8)).save(out / "spheroids-truth.png", optimize=True)
    g16 = np.round(img * 65535).astype(np.uint16)
    Image.fromarray(g16).save(out / "spheroids.tiff", compression="raw")
    rgb = Image.fromarray(np.repeat(g8[..., None], 3, axis=2))
    rgb.save(out / "spheroids.jpg", quality=95)
    rgb.save(out / "spheroids.webp", lossless=True)

    names = ["spheroids.png", "spheroids.tiff", "spheroids.jpg", "spheroids.webp"]
    truth = np.asarray(Image.open(out / "spheroids-truth.png")) > 127
    ok = True
    for name in names:
        grey = load_grey(out / name)
        assert grey.shape == (IMG_H, IMG_W), (name, grey.shape)
        scores = [iou(segment(sess, grey, r), truth) for r in (resize_pil, resize_plain)]
        ok &= min(scores) >= MIN_IOU
        print(f"  {name:<22} IoU {scores[0]:.3f} (antialiased bilinear), {scores[1]:.3f} (plain bilinear)")
    if not ok:
        sys.exit(f"an image fixture scored IoU < {MIN_IOU}")
    return names + ["spheroids-truth.png"]


# --------------------------------------------------------------------------- audio


def classify(sess, wave: np.ndarray) -> np.ndarray:
    """Mono 16 kHz float wave (any length) -> softmax probabilities."""
    x = np.zeros(16000, np.float32)
    x[: min(16000, len(wave))] = wave[:16000]
    logits = sess.run(None, {"waveform": x[None]})[0][0].astype(np.float64)
    p = np.exp(logits - logits.max())
    return p / p.sum()


def linear_resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    n_out = int(round(len(x) * sr_out / sr_in))
    return np.interp(np.arange(n_out) * sr_in / sr_out, np.arange(len(x)), x).astype(np.float32)


def decode(path: Path) -> tuple[np.ndarray, int]:
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), sr


def variants(path: Path) -> list[tuple[str, np.ndarray]]:
    """The 16 kHz mono waves a server might get from this file."""
    wave, sr = decode(path)
    if sr != 16000:
        return [("resample_poly", resample_poly(wave, 160, 441).astype(np.float32)),
                ("linear", linear_resample(wave, sr, 16000))]
    if path.suffix == ".mp3":  # decoders differ in how much encoder delay they strip
        return [(f"delay {d}", np.concatenate([np.zeros(d, np.float32), wave])) for d in (0, 529, 1105, 2257)]
    return [("", wave)]


def write_float_wav(path: Path, wave: np.ndarray, sr: int) -> None:
    """Mono 32-bit IEEE-float WAV (fmt + fact + data). Written by hand because libsndfile
    adds a PEAK chunk holding a timestamp, which would make reruns differ."""
    data = wave.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sr, sr * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"fact" + struct.pack("<II", 4, len(wave)) + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def write_file(out: Path, name: str, wave: np.ndarray, label: str) -> None:
    if name.endswith("-44k-stereo.wav"):
        up = np.clip(resample_poly(wave, 441, 160), -1, 1)
        sf.write(out / name, np.stack([up, 0.8 * up], axis=1), 44100, subtype="PCM_16")
    elif name.endswith("-f32.wav"):
        write_float_wav(out / name, wave, 16000)
    elif name.endswith(".mp3"):
        sf.write(out / name, wave, 16000, format="MP3")
    else:
        sf.write(out / name, wave, 16000, subtype="PCM_16")


def audio_files(label: str) -> list[str]:
    names = [f"call-{label}.wav"]
    if label == "owl-hoot":
        names += ["call-owl-hoot.flac", "call-owl-hoot.mp3"]
    if label == "bird-chirp":
        names.append("call-bird-chirp-44k-stereo.wav")
    if label == "cricket-trill":
        names.append("call-cricket-trill-f32.wav")
    return names


def write_audio(out: Path, sess) -> list[str]:
    written = []
    for ci, label in enumerate(CLASSES):
        names = audio_files(label)
        for seed in range(AUDIO_SEED0 + 1000 * ci, AUDIO_SEED0 + 1000 * ci + 300):
            wave = make_clip(np.random.default_rng(seed), label)
            if np.abs(wave).max() < 0.1:  # keep the fixtures comfortably audible
                continue
            if classify(sess, wave)[ci] < MARGIN_PROB:
                continue
            for name in names:
                write_file(out, name, wave, label)
            probs = {(n, v): classify(sess, w) for n in names for v, w in variants(out / n)}
            if all(p[ci] >= MARGIN_PROB for p in probs.values()):
                break
        else:
            sys.exit(f"no seed for {label} met the probability target")
        print(f"{label}: seed {seed}, peak {np.abs(wave).max():.2f}")
        for (name, var), p in probs.items():
            top = int(np.argmax(p))
            print(f"  {name:<32} {var:<14} top-1 {CLASSES[top]} p={p[top]:.3f}")
            if top != ci or p[ci] < MIN_PROB:
                sys.exit(f"{name} misclassified")
        written += names
    return written


README = """\
# Media fixtures

Inputs for the server's end-to-end tests of the `spheroid-seg` and `night-calls`
demo models. Everything here is synthetic and written by
`models/make_media_fixtures.py` (fixed seeds, so reruns give the same content):

    pip install -r models/requirements-train.txt
    python models/make_media_fixtures.py

The script checks every file against the committed models with ONNX Runtime.

| file | what it is |
| --- | --- |
| `spheroids.png` | synthetic spheroid image, 192 wide x 160 high, 8-bit greyscale (not 128x128, so the server must resize) |
| `spheroids-truth.png` | its ground-truth mask, 8-bit greyscale, 0 = background, 255 = spheroid |
| `spheroids.tiff` | the same image, 16-bit greyscale TIFF (value = round(x * 65535)), uncompressed |
| `spheroids.jpg` | the same image, RGB JPEG quality 95 (grey copied into all three channels) |
| `spheroids.webp` | the same image, lossless WebP (RGB) |
| `call-owl-hoot.wav` | 1 s owl hoots, 16 kHz mono 16-bit PCM |
| `call-bird-chirp.wav` | 1 s bird chirps, 16 kHz mono 16-bit PCM |
| `call-cricket-trill.wav` | 1 s cricket trill, 16 kHz mono 16-bit PCM |
| `call-frog-croak.wav` | 1 s frog croaks, 16 kHz mono 16-bit PCM |
| `call-background.wav` | 1 s background noise only, 16 kHz mono 16-bit PCM |
| `call-owl-hoot.flac` | the owl-hoot clip as FLAC, 16 kHz mono 16-bit |
| `call-owl-hoot.mp3` | the owl-hoot clip as MP3, 16 kHz mono |
| `call-bird-chirp-44k-stereo.wav` | the bird-chirp clip resampled to 44.1 kHz, two channels (right = 0.8 x left), 16-bit PCM |
| `call-cricket-trill-f32.wav` | the cricket-trill clip as 32-bit float WAV, 16 kHz mono |

What the script verified, the server's way (resize to 128x128 bilinear, normalise
(x - 0.5) / 0.25, mask resized back bilinear and thresholded at 0.5; audio mixed to
mono, resampled to 16 kHz, cut or padded to 16000 samples):
every spheroid image gives IoU >= 0.85 against `spheroids-truth.png`, and every
`call-<label>*` file is classified as `<label>` with softmax probability >= 0.9.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = ap.parse_args()
    out = args.root / "tests" / "fixtures" / "media"
    out.mkdir(parents=True, exist_ok=True)
    seg = session(args.root / "models" / "spheroid-seg" / "model.onnx")
    calls = session(args.root / "models" / "night-calls" / "model.onnx")
    written = write_images(out, seg) + write_audio(out, calls)
    (out / "README.md").write_text(README, encoding="utf-8")
    total = sum((out / n).stat().st_size for n in written + ["README.md"])
    print(f"wrote {len(written) + 1} files into tests/fixtures/media ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
