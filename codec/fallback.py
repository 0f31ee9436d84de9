"""Classical lossless coders for what the learned path does not cover.

- ``jxl``: JPEG-XL lossless (libjxl through ``imagecodecs``) for 8/16-bit images of 1-4 channels:
  grayscale, gray+alpha, palette indices, bilevel, 16-bit colour, and the alpha plane of RGBA.
  Note ``lossless=True``: ``level=100`` alone is not lossless.
- ``zlib``: raw pixels deflated, for what JPEG-XL cannot hold (32-bit integer and float images).

Decoders check the shape and dtype they get back; the container's pixel hash checks the values.
"""

from __future__ import annotations

import zlib

import imagecodecs
import numpy as np

from codec.errors import CorruptFileError

JXL_EFFORT = 7


def jxl_supports(pixels: np.ndarray) -> bool:
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return pixels.dtype.name in ("bool", "uint8", "uint16") and 1 <= channels <= 4


def jxl_encode(pixels: np.ndarray) -> bytes:
    arr = pixels.astype(np.uint8) if pixels.dtype == bool else pixels
    return bytes(imagecodecs.jpegxl_encode(np.ascontiguousarray(arr), lossless=True, effort=JXL_EFFORT))


def jxl_decode(data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    try:
        arr = imagecodecs.jpegxl_decode(data)
    except Exception as exc:
        raise CorruptFileError(f"JPEG-XL payload does not decode: {exc}") from exc
    want = np.uint8 if dtype == np.bool_ else dtype
    if arr.dtype != want or arr.size != int(np.prod(shape)):
        raise CorruptFileError(f"JPEG-XL payload holds {arr.shape} {arr.dtype}, header says {shape} {dtype}")
    arr = arr.reshape(shape)
    return arr.astype(bool) if dtype == np.bool_ else arr


def zlib_encode(pixels: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes(), 9)


def zlib_decode(data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    d = zlib.decompressobj()
    try:
        raw = d.decompress(data, expected)  # never inflates past what the header promised
    except zlib.error as exc:
        raise CorruptFileError(f"zlib payload does not decode: {exc}") from exc
    if len(raw) != expected or d.unconsumed_tail or not d.eof:
        raise CorruptFileError("zlib payload size does not match the header")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
