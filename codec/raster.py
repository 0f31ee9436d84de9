"""An image as callic sees it: a pixel array plus what is needed to give the file back.

``mode`` is Pillow's mode name, plus ``RGB;16`` and ``RGBA;16`` for 16-bit colour (which Pillow
cannot hold). The pixel array is what must come back bit for bit; palette, transparency and
metadata ride along in their own sections, and the v2 hash (``raster_hash``) covers them too:
they change how the pixels are shown.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

# (dtype, channels) -> mode, for arrays given without a mode.
_DEFAULT_MODES = {
    ("bool", 1): "1",
    ("uint8", 1): "L",
    ("uint8", 2): "LA",
    ("uint8", 3): "RGB",
    ("uint8", 4): "RGBA",
    ("uint16", 1): "I;16",
    ("uint16", 3): "RGB;16",
    ("uint16", 4): "RGBA;16",
    ("int32", 1): "I",
    ("float32", 1): "F",
}
SUPPORTED_DTYPES = ("bool", "uint8", "uint16", "int32", "float32")
# Every mode a file may name -> the (dtype, channels) of its pixels. Only these are written, and a
# file naming another mode, or this mode for other pixels, is refused: a writer would misread it.
MODES = {
    "1": ("bool", 1),
    "L": ("uint8", 1),
    "P": ("uint8", 1),
    "LA": ("uint8", 2),
    "La": ("uint8", 2),
    "PA": ("uint8", 2),
    "RGB": ("uint8", 3),
    "YCbCr": ("uint8", 3),
    "LAB": ("uint8", 3),
    "HSV": ("uint8", 3),
    "RGBA": ("uint8", 4),
    "RGBa": ("uint8", 4),
    "RGBX": ("uint8", 4),
    "CMYK": ("uint8", 4),
    "I;16": ("uint16", 1),
    "RGB;16": ("uint16", 3),
    "RGBA;16": ("uint16", 4),
    "I": ("int32", 1),
    "F": ("float32", 1),
}
PALETTE_MODES = {"RGB": 3, "RGBA": 4}  # palette mode -> bytes per entry
MAX_PALETTE_ENTRIES = 256


@dataclass
class Raster:
    pixels: np.ndarray
    mode: str
    palette: bytes | None = None  # raw palette entries, for mode "P" / "PA"
    palette_mode: str | None = None  # "RGB" or "RGBA"
    icc_profile: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    transparency: bytes | None = None  # Pillow's "transparency" info, serialized by codec.images
    png_chunks: bytes | None = None  # a PNG's metadata chunks (text, pHYs, ...), verbatim: see codec.images

    @classmethod
    def from_array(cls, pixels: np.ndarray, mode: str | None = None) -> Raster:
        pixels = np.ascontiguousarray(pixels)
        if pixels.dtype.byteorder == ">":
            pixels = pixels.astype(pixels.dtype.newbyteorder("="))
        if pixels.ndim not in (2, 3) or pixels.dtype.name not in SUPPORTED_DTYPES:
            raise ValueError(f"unsupported pixel array: shape {pixels.shape}, dtype {pixels.dtype}")
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        if mode is None:
            mode = _DEFAULT_MODES.get((pixels.dtype.name, channels))
            if mode is None:
                raise ValueError(f"give a mode for a {pixels.dtype} array with {channels} channels")
        return cls(pixels, mode)

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def channels(self) -> int:
        return 1 if self.pixels.ndim == 2 else self.pixels.shape[2]


def layout_problem(mode: str, dtype: str, channels: int) -> str | None:
    """Why ``mode`` cannot name pixels of ``dtype`` x ``channels`` (None when it can)."""
    if mode not in MODES:
        return f"unknown mode {mode!r}"
    if MODES[mode] != (dtype, channels):
        want_dtype, want_channels = MODES[mode]
        return f"mode {mode} needs {want_channels} channel(s) of {want_dtype}, not {channels} of {dtype}"
    return None


def palette_problem(mode: str, palette_mode: str, palette: bytes) -> str | None:
    """Why a palette cannot go with an image of ``mode`` (None when it can)."""
    if mode not in ("P", "PA"):
        return f"a palette with a {mode} image"
    size = PALETTE_MODES.get(palette_mode)
    if size is None:
        return f"unknown palette mode {palette_mode!r}"
    if len(palette) % size or len(palette) > size * MAX_PALETTE_ENTRIES:
        return f"a {palette_mode} palette of {len(palette)} bytes (entries of {size} bytes, at most 256)"
    return None


def _hashable(pixels: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(pixels)
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8) != 0  # Pillow's bilevel arrays may store True as 0xFF
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


def _update_pixels(h: Any, arr: np.ndarray) -> None:  # h: a hashlib hash
    h.update(arr.dtype.name.encode() + b"\0")
    h.update(struct.pack("<B", arr.ndim) + b"".join(struct.pack("<Q", s) for s in arr.shape))
    h.update(arr.tobytes())


def pixel_hash(pixels: np.ndarray) -> bytes:
    """Hash v1 (files of format version 1, dataset pins): SHA-256 of dtype, shape and
    little-endian pixel bytes, and nothing else."""
    h = hashlib.sha256(b"callic-pixels-v1")
    _update_pixels(h, _hashable(pixels))
    return h.digest()


def _display_facts(raster: Raster) -> list[tuple[bytes, bytes]]:
    """Everything besides the pixel array that changes how the pixels are shown, in canonical
    form: an empty value is an absent one (neither is stored), a palette's mode counts only with
    the palette and defaults to RGB (as it is stored)."""
    palette = raster.palette or b""
    palette_mode = (raster.palette_mode or "RGB").encode("ascii", "replace") if palette else b""
    return [
        (b"mode", raster.mode.encode("ascii", "replace")),
        (b"palette mode", palette_mode),
        (b"palette", palette),
        (b"transparency", raster.transparency or b""),
        (b"icc profile", raster.icc_profile or b""),
        (b"exif", raster.exif or b""),
        (b"xmp", raster.xmp or b""),
        (b"png chunks", raster.png_chunks or b""),  # gAMA, cHRM, sRGB... change how pixels look
    ]


def raster_hash(raster: Raster) -> bytes:
    """Hash v2 (files of format version 2, manifests since): SHA-256 of ``"callic-pixels-v2"``,
    then each of ``_display_facts`` as name, NUL, u64 LE length, value, then dtype, shape and the
    little-endian pixel bytes as in v1. Mode, palette, transparency and metadata are covered:
    a file whose palette or mode was changed no longer verifies."""
    h = hashlib.sha256(b"callic-pixels-v2")
    for name, value in _display_facts(raster):
        h.update(name + b"\0" + struct.pack("<Q", len(value)) + value)
    _update_pixels(h, _hashable(raster.pixels))
    return h.digest()


def hash_of_version(raster: Raster, version: int) -> bytes:
    """The hash a file of format ``version`` stores: v1 of the pixels alone, v2 of the raster."""
    return pixel_hash(raster.pixels) if version < 2 else raster_hash(raster)
