#!/usr/bin/env python3
"""Write the seed corpus of each fuzz target into fuzz/corpus/<target>/.

Seeds are small valid inputs and a few edge cases, most of them cut down
from tests/fixtures/media; `crash-*` files are inputs of crashes found and
fixed, kept so that every run replays them. The files are committed; rerun
this after changing it (numpy is the only requirement; `make venv` installs it):

    .venv/bin/python fuzz/make_corpus.py
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MEDIA = ROOT / "tests" / "fixtures" / "media"
CORPUS = ROOT / "fuzz" / "corpus"
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
             "INT64", "FP32", "FP64"]


def png(width: int, height: int, channels: int, depth: int = 8) -> bytes:
    """A PNG of a gradient: grey or RGB, 8 or 16 bits."""
    color = {1: 0, 3: 2}[channels]
    rows = b""
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            for c in range(channels):
                v = (x * 37 + y * 11 + c * 80) % 256
                row += bytes([v, v]) if depth == 16 else bytes([v])
        rows += bytes(row)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def tiff(width: int, height: int) -> bytes:
    """An uncompressed 8-bit grey TIFF, little-endian."""
    pixels = bytes((x * 9 + y * 5) % 256 for y in range(height) for x in range(width))
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 1), (278, 3, 1, height),
               (279, 4, 1, len(pixels))]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(entries) + 4
    out = b"II*\0" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = data_at if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    return out + struct.pack("<I", 0) + pixels


def wav(source: str, frames: int) -> bytes:
    """The first `frames` frames of a PCM or float WAV fixture, its lengths fixed."""
    data = (MEDIA / source).read_bytes()
    fmt = data[12:36]
    channels, _, _, block = struct.unpack("<HIIH", fmt[10:22])
    at = data.index(b"data") + 8
    samples = data[at:at + frames * block]
    extra = data[36:at - 8]  # a float WAV's 'fact' chunk
    body = b"WAVE" + fmt + extra + b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", len(body)) + body


def npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    out = io.BytesIO()
    if version is None:
        np.save(out, array)
    else:
        np.lib.format.write_array(out, array, version=version)
    return out.getvalue()


def form(parts: list[tuple[str, str | None, bytes]], close: bool = True) -> bytes:
    out = b""
    for name, filename, data in parts:
        out += b"--gantry-fuzz\r\n"
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += disposition.encode() + b"\r\n"
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + (b"--gantry-fuzz--\r\n" if close else b"")


def infer(inputs: list[tuple[dict, bytes]], outputs: list[dict] | None = None,
          split: bool = True) -> bytes:
    header: dict = {"id": "seed", "inputs": [spec for spec, _ in inputs]}
    if outputs is not None:
        header["outputs"] = outputs
    text = json.dumps(header).encode()
    binary = b"".join(data for _, data in inputs)
    length = len(text) if split else 0xFFFF
    return struct.pack("<H", length) + text + binary


def json_tensor(datatype: str, shape: list[int], data: str) -> bytes:
    return bytes([DATATYPES.index(datatype), len(shape)] + shape) + data.encode()


def seeds() -> dict[str, dict[str, bytes]]:
    small_png = png(24, 20, 1)
    owl = wav("call-owl-hoot.wav", 400)
    return {
        "json_tensor": {
            "fp32-nested": json_tensor("FP32", [2, 2], "[[1, 2.5], [-3e38, 4]]"),
            "fp32-specials": json_tensor("FP32", [3], '["NaN", "Infinity", "-Infinity"]'),
            "fp32-overflow": json_tensor("FP32", [2], "[0, 1e39]"),
            "fp64": json_tensor("FP64", [2], "[1e300, -0.0]"),
            "fp64-overflow": json_tensor("FP64", [1], "[1e400]"),
            "bool": json_tensor("BOOL", [1, 3], "[true, false, 1]"),
            "uint8": json_tensor("UINT8", [3], "[0, 255, 256]"),
            "uint64": json_tensor("UINT64", [2], "[18446744073709551615, 1e19]"),
            "int8": json_tensor("INT8", [2], "[-128, 127.0]"),
            "int64": json_tensor("INT64", [2], "[-9223372036854775808, 1.5]"),
            "scalar": json_tensor("INT32", [], "7"),
            "empty": json_tensor("INT16", [0], "[]"),
            "null": json_tensor("FP32", [1], "[null]"),
        },
        "v2_binary": {
            "json": infer([({"name": "x", "shape": [1, 4], "datatype": "FP32",
                             "data": [1, 2.5, "NaN", -4]}, b"")], split=False),
            "binary": infer(
                [({"name": "x", "shape": [1, 2], "datatype": "FP32",
                   "parameters": {"binary_data_size": 8}}, struct.pack("<2f", 1.5, float("nan"))),
                 ({"name": "flags", "shape": [3], "datatype": "BOOL",
                   "parameters": {"binary_data_size": 3}}, b"\x01\x00\x01")],
                [{"name": "y", "parameters": {"binary_data": True}}]),
            "options": struct.pack("<H", 0xFFFF) + json.dumps({
                "inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [1, -2]}],
                "parameters": {"timeout": 5000, "priority": 1, "binary_data_output": True},
                "outputs": [{"name": "y"}]}).encode(),
            "short-binary": infer([({"name": "x", "shape": [4], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": 9}}, b"\x01\x02")]),
            "bad-length": struct.pack("<H", 0xFFFE) + b'{"inputs": []}',
        },
        "npy": {
            "f32": npy(np.arange(6, dtype="<f4").reshape(2, 3)),
            "f64-big-endian": npy(np.array([1.5, -2.0], dtype=">f8")),
            "i16-big-endian": npy(np.array([1, 2], dtype=">i2")),
            "bool": npy(np.array([True, False, True])),
            "u8-scalar": npy(np.array(7, dtype=np.uint8)),
            "i64-empty": npy(np.zeros((0, 3), dtype=np.int64)),
            "v2-header": npy(np.array([1, 2, 3], dtype=np.uint32), version=(2, 0)),
            "fortran": npy(np.asfortranarray(np.arange(4, dtype=np.int32).reshape(2, 2))),
            "complex": npy(np.array([1 + 2j], dtype=np.complex64)),
            "truncated": npy(np.arange(8, dtype=np.int8))[:-3],
        },
        "multipart": {
            "upload": b"\x3f" + form([("model", None, b"spheroid-seg"),
                                     ("threshold", None, b"0.5"),
                                     ("file", "cells.png", small_png)]),
            "batch": b"\x07" + form([("model", None, b"night-calls"), ("top_k", None, b"3"),
                                    ("file", "a.wav", owl[:200]), ("file", "b.npy", npy(
                                        np.zeros(3, dtype="<f4")))]),
            "unclosed": b"\xff" + form([("model", None, b"m"), ("file", "x", b"abc")],
                                      close=False),
            "bare-lf": b"\x00" + form([("model", None, b"m")]).replace(b"\r\n", b"\n"),
        },
        "sniff": {
            name: data for name, data in [
                ("png", small_png[:16]), ("jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF"),
                ("tiff-le", b"II*\0\x08\0\0\0"), ("tiff-be", b"MM\0*\0\0\0\x08"),
                ("bigtiff", b"II+\0\x08\0\0\0"), ("webp", b"RIFF\x10\0\0\0WEBPVP8L"),
                ("wav", owl[:44]), ("gif", b"GIF89a\x01\0\x01\0"), ("bmp", b"BM" + bytes(30)),
                ("flac", b"fLaC\0\0\0\x22"), ("ogg", b"OggS\0\x02"), ("id3", b"ID3\x04\0\0"),
                ("mpeg-frame", b"\xff\xfb\x90\x64"), ("adts", b"\xff\xf1\x50\x80"),
                ("npy", b"\x93NUMPY\x01\0"), ("pdf", b"%PDF-1.7"), ("zip", b"PK\x03\x04"),
                ("text", b"hello, world"), ("riff-avi", b"RIFF\x10\0\0\0AVI LIST"),
            ]
        },
        "image": {
            "grey.png": small_png,
            "rgb.png": png(16, 12, 3),
            "grey16.png": png(10, 8, 1, depth=16),
            "grey.tiff": tiff(24, 20),
            "spheroids.jpg": (MEDIA / "spheroids.jpg").read_bytes(),
            "spheroids.webp": (MEDIA / "spheroids.webp").read_bytes(),
            "truncated.png": small_png[: len(small_png) // 2],
        },
        "audio": {
            "owl.wav": owl,
            "cricket-f32.wav": wav("call-cricket-trill-f32.wav", 300),
            "bird-44k-stereo.wav": wav("call-bird-chirp-44k-stereo.wav", 500),
            "owl-head.flac": (MEDIA / "call-owl-hoot.flac").read_bytes()[:3000],
            "owl-head.mp3": (MEDIA / "call-owl-hoot.mp3").read_bytes()[:2000],
            "streamed.wav": owl[:40] + b"\xff\xff\xff\xff" + owl[44:],
        },
    }


def main() -> None:
    for target, files in seeds().items():
        # Inputs of fixed crashes (crash-*) are kept; seeds are rewritten.
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
    total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    print(f"wrote {sum(len(f) for f in seeds().values())} seeds, {total} bytes")


if __name__ == "__main__":
    main()
