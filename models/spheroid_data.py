"""Synthetic microscopy-like images of round cell spheroids, with ground-truth masks.

Used by `models/train_spheroid_seg.py` (training and held-out evaluation of the
`spheroid-seg` demo model) and by `models/make_media_fixtures.py` (the spheroid
test images). Pure numpy, deterministic for a given `numpy.random.Generator`.

What an image holds:
  * 1-5 blobs ("spheroids") with radius roughly 6-30 px at 128x128 (scaled with the
    image's smaller side), slightly elliptical and irregular outlines, a brightness
    profile (flat, dome, dark necrotic core or bright rim), internal texture;
  * sometimes a touching or overlapping pair;
  * bright-on-dark contrast, a quarter of the blobs with dim contrast;
  * background level, linear gradient and vignetting;
  * gaussian blur (optics), then shot (Poisson) and gaussian (read) noise.

The mask is the union of the blob outlines (one foreground class), before blur/noise.

Requirements:  numpy (see models/requirements-train.txt)
Usage:
    rng = numpy.random.default_rng(0)
    image, mask = make_sample(rng)              # float32 [128,128] in [0,1], bool [128,128]
    image, mask = make_sample(rng, 160, 192)    # height 160, width 192 (blobs 1.25x larger)
Run time: about 4 ms per 128x128 sample on one CPU core.
"""

from __future__ import annotations

import numpy as np

__all__ = ["make_sample", "gaussian_blur"]


def _gauss_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable gaussian blur with reflected borders (float32 in, float32 out)."""
    if sigma <= 0.05:
        return img.astype(np.float32, copy=True)
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    h, w = img.shape
    p = np.pad(img.astype(np.float32), ((0, 0), (r, r)), mode="reflect")
    tmp = np.zeros((h, w), np.float32)
    for i, kv in enumerate(k):
        tmp += kv * p[:, i : i + w]
    p = np.pad(tmp, ((r, r), (0, 0)), mode="reflect")
    out = np.zeros((h, w), np.float32)
    for i, kv in enumerate(k):
        out += kv * p[i : i + h, :]
    return out


def _smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    f = gaussian_blur(rng.standard_normal((h, w)).astype(np.float32), sigma)
    return (f - f.mean()) / (f.std() + 1e-6)


def _blob_params(rng: np.random.Generator, scale: float, h: int, w: int, near=None) -> dict:
    # Log-uniform radius over ~6-30 px (at 128 px), so small blobs are common.
    r = float(np.exp(rng.uniform(np.log(6.0), np.log(30.0)))) * scale
    if near is None:
        # Centre anywhere; a blob may be cut by the border, but never mostly outside.
        cy = rng.uniform(-0.2 * r, h - 1 + 0.2 * r)
        cx = rng.uniform(-0.2 * r, w - 1 + 0.2 * r)
    else:
        # Touching or overlapping neighbour of `near`.
        ang = rng.uniform(0, 2 * np.pi)
        dist = (near["r"] + r) * rng.uniform(0.7, 1.02)
        cy = near["cy"] + dist * np.sin(ang)
        cx = near["cx"] + dist * np.cos(ang)
    dim = rng.random() < 0.25
    return {
        "r": r,
        "cy": cy,
        "cx": cx,
        "theta": rng.uniform(0, np.pi),
        "aspect": rng.uniform(0.75, 1.0),  # minor/major axis ratio
        # Outline irregularity: low-order harmonics of the radius.
        "harm": [(k, rng.uniform(0, 0.10 / k), rng.uniform(0, 2 * np.pi)) for k in range(2, 7)],
        "contrast": rng.uniform(0.08, 0.2) if dim else rng.uniform(0.25, 0.75),
        "profile": rng.choice(["flat", "dome", "core", "rim"], p=[0.3, 0.3, 0.25, 0.15]),
        "depth": rng.uniform(0.15, 0.55),
        "tex_amp": rng.uniform(0.0, 0.25),
        "tex_sign": float(rng.choice([-1.0, 1.0])),
    }


def _render_blob(b: dict, yy: np.ndarray, xx: np.ndarray, tex: np.ndarray):
    """Returns (intensity contribution, inside-mask) for one blob."""
    dy, dx = yy - b["cy"], xx - b["cx"]
    c, s = np.cos(b["theta"]), np.sin(b["theta"])
    u = c * dx + s * dy
    v = (-s * dx + c * dy) / b["aspect"]
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    rr = np.full_like(rho, b["r"])
    for k, a, p in b["harm"]:
        rr += b["r"] * a * np.cos(k * phi + p)
    inside = rho < rr
    # Anti-aliased edge (about one pixel wide), measured along the (scaled) radius.
    alpha = np.clip(0.5 + (rr - rho), 0.0, 1.0)
    d = np.clip(rho / rr, 0.0, 1.0)
    prof = b["profile"]
    if prof == "flat":
        f = np.ones_like(d)
    elif prof == "dome":
        f = 1.0 - b["depth"] * d * d
    elif prof == "core":  # darker (necrotic) centre
        f = 1.0 - b["depth"] * np.exp(-((d / 0.45) ** 2))
    else:  # "rim": brighter border
        f = (1.0 - b["depth"]) + b["depth"] * d**3
    f = f * (1.0 + b["tex_amp"] * tex)
    return b["contrast"] * np.clip(f, 0.3, 1.6) * alpha, inside


def make_sample(rng: np.random.Generator, height: int = 128, width: int = 128, scale: float | None = None):
    """One synthetic spheroid image and its mask.

    Blob sizes scale with min(height, width) / 128 unless `scale` is given (training
    uses 96x96 crops with scale=1.0, i.e. 128-pixel-image blob sizes).
    Returns (image float32 [height,width] in [0,1], mask bool [height,width]).
    """
    h, w = int(height), int(width)
    scale = min(h, w) / 128.0 if scale is None else float(scale)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # Blobs: 1-5, some as touching/overlapping pairs.
    n = int(rng.integers(1, 6))
    blobs: list[dict] = []
    while len(blobs) < n:
        if blobs and rng.random() < 0.35:
            blobs.append(_blob_params(rng, scale, h, w, near=blobs[int(rng.integers(len(blobs)))]))
        else:
            blobs.append(_blob_params(rng, scale, h, w))

    # One internal-texture field per image; each blob sees it with its own sign.
    tex = _smooth_noise(rng, h, w, rng.uniform(0.8, 2.5) * scale)
    layer = np.zeros((h, w), np.float32)
    mask = np.zeros((h, w), bool)
    for b in blobs:
        # Render only inside the blob's bounding box (radius <= 1.5 r / aspect).
        ext = 1.6 * b["r"] / b["aspect"] + 2.0
        y0, y1 = max(0, int(b["cy"] - ext)), min(h, int(b["cy"] + ext) + 1)
        x0, x1 = max(0, int(b["cx"] - ext)), min(w, int(b["cx"] + ext) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        win = (slice(y0, y1), slice(x0, x1))
        t = b["tex_sign"] * tex[win]
        contrib, inside = _render_blob(b, yy[win], xx[win], t)
        layer[win] = np.maximum(layer[win], contrib.astype(np.float32))
        mask[win] |= inside

    # Background: level + linear gradient + vignetting.
    bg = rng.uniform(0.02, 0.25)
    g_ang = rng.uniform(0, 2 * np.pi)
    g_amp = rng.uniform(0.0, 0.12)
    gy = (yy / max(h - 1, 1) - 0.5) * np.sin(g_ang)
    gx = (xx / max(w - 1, 1) - 0.5) * np.cos(g_ang)
    rad2 = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2
    vig = rng.uniform(0.0, 0.35)
    back = bg + g_amp * (gx + gy) * 2.0
    img = (back + layer) * (1.0 - vig * 0.5 * rad2)

    # Optics blur, then shot + read noise.
    img = gaussian_blur(img.astype(np.float32), rng.uniform(0.4, 1.6) * scale)
    photons = float(np.exp(rng.uniform(np.log(150.0), np.log(3000.0))))
    img = rng.poisson(np.clip(img, 0.0, None) * photons) / photons
    img = img + rng.normal(0.0, rng.uniform(0.003, 0.025), size=img.shape)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return img, mask
