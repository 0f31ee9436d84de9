"""The classic coders the benches measure against: the lossless ones at their strongest standard
setting (the table in ``jobs.bench.command``), the lossy ones at a range of quality settings
(``jobs.bench.lossy``)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np

ANCHOR_NAMES = ("jxl-e7", "jxl-e9", "webp-m6", "jpeg2000", "jpegls", "png")
Row = dict[str, Any]


@dataclass(frozen=True)
class Codec:
    """One lossless codec under test: pixels -> bytes -> pixels."""

    name: str
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes], np.ndarray]
    details: Callable[[], Row] | None = None  # extra columns about the last encode (stage times)


def anchor_codecs(threads: int | None = None) -> dict[str, Codec]:
    """The classic coders at their strongest standard lossless setting (see the module docstring).

    The lambdas look the imagecodecs functions up at call time, so a test can patch one.
    """
    ic = imagecodecs
    nt: dict[str, int] = {"numthreads": threads} if threads else {}
    return {
        "jxl-e7": Codec(
            "jxl-e7", lambda a: ic.jpegxl_encode(a, lossless=True, effort=7, **nt), lambda b: ic.jpegxl_decode(b, **nt)
        ),
        "jxl-e9": Codec(
            "jxl-e9", lambda a: ic.jpegxl_encode(a, lossless=True, effort=9, **nt), lambda b: ic.jpegxl_decode(b, **nt)
        ),
        "webp-m6": Codec(
            "webp-m6",
            lambda a: ic.webp_encode(a, level=100, lossless=True, method=6, **nt),
            lambda b: ic.webp_decode(b),
        ),
        "jpeg2000": Codec(
            "jpeg2000",
            lambda a: ic.jpeg2k_encode(a, reversible=True, mct=True, codecformat="J2K", **nt),
            lambda b: ic.jpeg2k_decode(b, **nt),
        ),
        "jpegls": Codec(
            "jpegls",
            lambda a: ic.jpegls_encode(subtract_green(a), level=0),
            lambda b: add_green(ic.jpegls_decode(b)),
        ),
        "png": Codec("png", lambda a: ic.png_encode(a, level=9), lambda b: ic.png_decode(b)),
    }


def subtract_green(pixels: np.ndarray) -> np.ndarray:
    """JPEG-LS's HP1 transform, R-G and B-G modulo 256: the decorrelation the anchor is quoted with."""
    out = pixels.copy()
    out[..., 0] -= pixels[..., 1]
    out[..., 2] -= pixels[..., 1]
    return out


def add_green(pixels: np.ndarray) -> np.ndarray:
    out = pixels.copy()
    out[..., 0] += pixels[..., 1]
    out[..., 2] += pixels[..., 1]
    return out


@dataclass
class LossyCodec:
    """One lossy codec under test: (pixels, setting) -> bytes -> pixels, at each of its settings."""

    name: str
    settings: list[Any]
    encode: Callable[[np.ndarray, Any], bytes]
    decode: Callable[[bytes], np.ndarray]


def _jpeg_encode(pixels: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _jpeg_decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def lossy_anchor_codecs(threads: int | None) -> list[LossyCodec]:
    """The lossy anchors of ``callic bench --lossy``, each with its quality settings (``jobs.bench.lossy``)."""
    q = [5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95]
    return [
        LossyCodec("jpeg", q, _jpeg_encode, _jpeg_decode),
        LossyCodec(
            "webp", q, lambda p, s: imagecodecs.webp_encode(p, level=s, lossless=False), imagecodecs.webp_decode
        ),
        LossyCodec(
            "avif",
            [10, 20, 30, 40, 50, 60, 70, 80, 90],
            lambda p, s: imagecodecs.avif_encode(p, level=s, speed=8, numthreads=threads),
            imagecodecs.avif_decode,
        ),
        LossyCodec(
            "jxl",
            [12, 8, 6, 4, 3, 2, 1.5, 1, 0.5],
            lambda p, s: imagecodecs.jpegxl_encode(p, distance=s, effort=7, numthreads=threads),
            imagecodecs.jpegxl_decode,
        ),
    ]
