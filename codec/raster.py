"""An image as callic sees it: a pixel array plus what is needed to give the file back.

``mode`` is Pillow's mode name, plus ``RGB;16`` and ``RGBA;16`` for 16-bit colour (which Pillow
cannot hold). The pixel array is what must come back bit for bit; palette, transparency and
metadata ride along in their own sections.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

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


def pixel_hash(pixels: np.ndarray) -> bytes:
    """SHA-256 of dtype, shape and little-endian pixel bytes: what a lossless decode must match."""
    arr = np.ascontiguousarray(pixels)
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8) != 0  # Pillow's bilevel arrays may store True as 0xFF
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    h = hashlib.sha256(b"callic-pixels-v1")
    h.update(arr.dtype.name.encode() + b"\0")
    h.update(struct.pack("<B", arr.ndim) + b"".join(struct.pack("<Q", s) for s in arr.shape))
    h.update(arr.tobytes())
    return h.digest()
