"""Synthetic one-second 16 kHz clips of night sounds, for the `night-calls` demo model.

Used by `models/train_night_calls.py` (training and held-out evaluation) and by
`models/make_media_fixtures.py` (the audio test files). Pure numpy, deterministic
for a given `numpy.random.Generator`.

Classes (`CLASSES`, in the model's logit order):
  owl-hoot       1-4 tonal hoots, fundamental ~250-600 Hz plus a couple of weak
                 harmonics, smooth envelopes, slight pitch glide
  bird-chirp     several fast frequency sweeps (up or down) between ~2 and 7 kHz
  cricket-trill  carrier ~3-6 kHz amplitude-modulated into pulse trains at
                 ~15-60 pulses/s, continuous or in 1-3 bursts
  frog-croak     1-3 low croaks: harmonic-rich ~100-400 Hz source, pulsed (rough)
  background     noise only: pink / brown / white / wind-like, sometimes faint mains hum

Every call clip: random timing (calls can start anywhere and may be cut at either end),
background noise at SNR 0-30 dB (measured over the call's active part), and a random
peak level of -30..-0.5 dBFS.

Requirements:  numpy (see models/requirements-train.txt)
Usage:
    rng = numpy.random.default_rng(0)
    wave = make_clip(rng, "owl-hoot")      # float32 [16000] in [-1, 1]
Run time: about 3 ms per clip on one CPU core.
"""

from __future__ import annotations

import numpy as np

SR = 16000
N = 16000
CLASSES = ["owl-hoot", "bird-chirp", "cricket-trill", "frog-croak", "background"]

__all__ = ["CLASSES", "SR", "N", "make_clip"]


def _env(n: int, attack: float, release: float) -> np.ndarray:
    """Raised-cosine attack/release envelope over n samples (fractions of n)."""
    e = np.ones(n)
    a, r = max(1, int(attack * n)), max(1, int(release * n))
    e[:a] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, a))
    e[n - r :] = np.minimum(e[n - r :], 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, r)))
    return e


def _place(out: np.ndarray, act: np.ndarray, ev: np.ndarray, start: int) -> None:
    """Adds event `ev` at sample `start` (may be negative or run past the end)."""
    s0, s1 = max(0, start), min(N, start + len(ev))
    if s1 > s0:
        out[s0:s1] += ev[s0 - start : s1 - start]
        act[s0:s1] = True


def _sequence(rng, events: list[np.ndarray], gap: tuple[float, float]):
    """Places events one after another; the first one at least half inside the clip."""
    out, act = np.zeros(N), np.zeros(N, bool)
    first = len(events[0])
    t = int(rng.uniform(-0.5 * first, N - 0.5 * first))
    for ev in events:
        _place(out, act, ev, t)
        t += len(ev) + int(rng.uniform(*gap) * SR)
    return out, act


def _owl(rng):
    f0 = rng.uniform(250, 600)
    h2, h3 = rng.uniform(0.1, 0.5), rng.uniform(0.03, 0.25)
    events = []
    for _ in range(int(rng.integers(1, 5))):
        n = int(rng.uniform(0.15, 0.6) * SR)
        t = np.arange(n) / SR
        glide = 1.0 + rng.uniform(-0.06, 0.06) * np.sin(np.pi * t / t[-1])
        vib = 1.0 + rng.uniform(0, 0.01) * np.sin(2 * np.pi * rng.uniform(3, 8) * t)
        f = f0 * rng.uniform(0.96, 1.04) * glide * vib
        ph = 2 * np.pi * np.cumsum(f) / SR
        x = np.sin(ph) + h2 * np.sin(2 * ph + 0.3) + h3 * np.sin(3 * ph + 1.1)
        events.append(x * _env(n, rng.uniform(0.15, 0.4), rng.uniform(0.2, 0.5)))
    return _sequence(rng, events, (0.05, 0.3))


def _bird(rng):
    up = rng.random() < 0.5
    events = []
    for _ in range(int(rng.integers(3, 11))):
        if rng.random() < 0.15:
            up = not up  # an occasional chirp the other way
        n = int(rng.uniform(0.015, 0.1) * SR)
        lo = rng.uniform(2000, 5500)
        hi = rng.uniform(lo + 1000, 7000)
        f_a, f_b = (lo, hi) if up else (hi, lo)
        s = np.linspace(0, 1, n)
        if rng.random() < 0.5:
            f = f_a + (f_b - f_a) * s
        else:
            f = f_a * (f_b / f_a) ** s
        ph = 2 * np.pi * np.cumsum(f) / SR
        x = np.sin(ph) + (0.2 * np.sin(2 * ph) if max(f_a, f_b) < 3800 else 0.0)
        events.append(x * _env(n, 0.2, 0.3))
    return _sequence(rng, events, (0.02, 0.15))


def _cricket(rng):
    fc = rng.uniform(3000, 6000)
    rate = rng.uniform(15, 60)
    duty = rng.uniform(0.3, 0.6)
    out, act = np.zeros(N), np.zeros(N, bool)
    if rng.random() < 0.4:
        bursts = [(int(rng.uniform(-0.3, 0.2) * SR), N + int(rng.uniform(0, 0.3) * SR))]
    else:
        bursts, t = [], int(rng.uniform(-0.15, 0.7) * SR)
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.uniform(0.25, 0.8) * SR)
            bursts.append((t, t + n))
            t += n + int(rng.uniform(0.05, 0.3) * SR)
    for b0, b1 in bursts:
        n = b1 - b0
        t = np.arange(n) / SR
        f = fc * (1 + rng.uniform(-0.01, 0.01) * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        ph = 2 * np.pi * np.cumsum(f) / SR
        carrier = np.sin(ph) + (0.15 * np.sin(2 * ph) if fc < 3700 else 0.0)
        cyc = (t * rate + rng.uniform()) % 1.0
        pulses = np.where(cyc < duty, np.sin(np.pi * cyc / duty) ** 2, 0.0)
        _place(out, act, carrier * pulses * _env(n, 0.05, 0.05), b0)
    return out, act


def _frog(rng):
    f0 = rng.uniform(100, 400)
    events = []
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.uniform(0.1, 0.4) * SR)
        t = np.arange(n) / SR
        f = f0 * rng.uniform(0.95, 1.05) * (1 + rng.uniform(-0.1, 0.05) * t / t[-1])
        ph = 2 * np.pi * np.cumsum(f) / SR
        # Harmonic-rich source up to ~3 kHz with a formant-like emphasis.
        formant = rng.uniform(400, 1500)
        x = np.zeros(n)
        for k in range(1, int(3000 / f0) + 1):
            amp = (1.0 / k**0.7) * (1.0 + 1.5 * np.exp(-(((k * f0 - formant) / 300.0) ** 2)))
            x += amp * np.sin(k * ph + rng.uniform(0, 2 * np.pi))
        # Rough / pulsed: amplitude pulses at 20-80 Hz.
        pr = rng.uniform(20, 80)
        cyc = (t * pr) % 1.0
        x *= 0.25 + 0.75 * np.sin(np.pi * cyc) ** rng.uniform(1.0, 4.0)
        events.append(x * _env(n, rng.uniform(0.03, 0.15), rng.uniform(0.1, 0.4)))
    return _sequence(rng, events, (0.08, 0.35))


def _colored(rng, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(N))
    f = np.fft.rfftfreq(N, 1 / SR)
    f[0] = f[1]
    x = np.fft.irfft(spec / f ** (exponent / 2), N)
    return x / (x.std() + 1e-12)


def _background(rng) -> np.ndarray:
    kind = rng.choice(["pink", "brown", "white", "wind"], p=[0.35, 0.25, 0.15, 0.25])
    if kind == "wind":
        x = _colored(rng, rng.uniform(1.5, 2.5))
        t = np.arange(N) / SR
        gust = 1 + 0.6 * np.sin(2 * np.pi * rng.uniform(0.2, 1.5) * t + rng.uniform(0, 6.3))
        x = x * gust + 0.3 * _colored(rng, 1.0)
    else:
        x = _colored(rng, {"pink": rng.uniform(0.8, 1.2), "brown": 2.0, "white": 0.0}[kind])
        x = x + rng.uniform(0, 0.3) * _colored(rng, rng.uniform(0, 2))
    if rng.random() < 0.3:  # faint mains hum with harmonics
        t = np.arange(N) / SR
        mains = rng.choice([50.0, 60.0])
        hum = sum(np.sin(2 * np.pi * k * mains * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3))
        x = x + rng.uniform(0.05, 0.4) * hum
    return x / (x.std() + 1e-12)


_CALLS = {"owl-hoot": _owl, "bird-chirp": _bird, "cricket-trill": _cricket, "frog-croak": _frog}


def make_clip(rng: np.random.Generator, label: str) -> np.ndarray:
    """One clip of class `label`: float32 [16000] in [-1, 1] at 16 kHz."""
    noise = _background(rng)
    if label == "background":
        x = noise
    elif label in _CALLS:
        sig, act = _CALLS[label](rng)
        p_sig = np.mean(sig[act] ** 2) if act.any() else 1.0
        snr_db = rng.uniform(0.0, 30.0)
        x = sig + noise * np.sqrt(p_sig / 10 ** (snr_db / 10))
    else:
        raise ValueError(f"unknown label {label!r}; expected one of {CLASSES}")
    peak_db = rng.uniform(-30.0, -0.5)
    x = x / (np.abs(x).max() + 1e-12) * 10 ** (peak_db / 20)
    return np.clip(x, -1.0, 1.0).astype(np.float32)
