#!/usr/bin/env python3
"""A Python backend calling Gantry the way a Flask app would: it holds the
file a user uploaded and posts it as it is, with `requests`.

    python tests/clients/flask_client.py http://127.0.0.1:8080 tests/fixtures/media

Runs against a live server with the `spheroid-seg` and `night-calls` demo
models and checks the answers; exits non-zero on the first surprise.
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import requests


class Gantry:
    """What a Flask app keeps next to its routes: one session, one base URL."""

    def __init__(self, base_url: str, timeout_s: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.timeout_s = timeout_s

    def predict_file(self, model: str, filename: str, data: bytes, **params) -> dict:
        """One file, e.g. `request.files["image"].read()` in a Flask view."""
        fields = {"model": model, **{k: str(v) for k, v in params.items()}}
        response = self.session.post(
            f"{self.base_url}/api/optimized/predict",
            data=fields,
            files={"file": (filename, io.BytesIO(data))},
            timeout=self.timeout_s,
        )
        body = response.json()
        if response.status_code != 200:
            raise GantryError(response.status_code, body["code"], body["error"])
        return body

    def predict_files(self, model: str, files: list[tuple[str, bytes]]) -> list[dict]:
        """Several files in one call; each entry has its own `status`."""
        response = self.session.post(
            f"{self.base_url}/api/optimized/predict/batch",
            data={"model": model},
            files=[("file", (name, io.BytesIO(data))) for name, data in files],
            timeout=self.timeout_s,
        )
        response.raise_for_status()
        return response.json()["results"]


class GantryError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok   {what}")


def main() -> None:
    base_url, fixtures = sys.argv[1], Path(sys.argv[2])
    gantry = Gantry(base_url)

    # Segmentation: the mask comes back as a PNG at the upload's size.
    answer = gantry.predict_file("spheroid-seg", "spheroids.png", (fixtures / "spheroids.png").read_bytes())
    mask = answer["mask"]
    png = base64.b64decode(mask["png_base64"])
    check(png.startswith(b"\x89PNG"), "the mask is a PNG")
    check((mask["width"], mask["height"]) == (192, 160), "the mask has the upload's size")
    check(0.0 < mask["foreground_fraction"] < 1.0, f"foreground fraction {mask['foreground_fraction']:.3f}")
    check(len(mask["contours"]) >= 1, f"{len(mask['contours'])} contours")

    # Classification, with a per-request top_k.
    answer = gantry.predict_file(
        "night-calls", "owl.flac", (fixtures / "call-owl-hoot.flac").read_bytes(), top_k=2
    )
    classes = answer["classes"]
    check(classes[0]["label"] == "owl-hoot", f"top label {classes[0]['label']} ({classes[0]['score']:.3f})")
    check(len(classes) == 2, "top_k=2 gives two labels")

    # Several clips at once, one of them broken: it fails alone.
    results = gantry.predict_files(
        "night-calls",
        [
            ("chirp.wav", (fixtures / "call-bird-chirp.wav").read_bytes()),
            ("broken.wav", (fixtures / "call-owl-hoot.wav").read_bytes()[:30]),
            ("frog.wav", (fixtures / "call-frog-croak.wav").read_bytes()),
        ],
    )
    check([r["status"] for r in results] == [200, 422, 200], "batch statuses in order")
    check(results[0]["classes"][0]["label"] == "bird-chirp", "first clip is a bird chirp")
    check(results[2]["classes"][0]["label"] == "frog-croak", "last clip is a frog croak")

    # A bad upload is a clear error, not a crash.
    try:
        gantry.predict_file("spheroid-seg", "notes.txt", b"not an image")
        check(False, "a text file is refused")
    except GantryError as e:
        check(e.status == 415 and e.code == "unsupported_media_type", f"a text file is refused: {e}")
    print("flask_client: all checks passed")


if __name__ == "__main__":
    main()
