"""Classical lossless coders for what the learned path does not cover.

- ``jxl``: JPEG-XL lossless (libjxl through ``imagecodecs``) for 8/16-bit images of 1-4 channels:
  grayscale, gray+alpha, palette indices, bilevel, 16-bit colour, and the alpha plane of RGBA.
  Note ``lossless=True``: ``level=100`` alone is not lossless.
- ``zlib``: raw pixels deflated, for what JPEG-XL cannot hold (32-bit integer and float images).

Decoders never trust the payload's own size: JPEG-XL is decoded into an array of the shape and
dtype the (already checked) header gives, and ``imagecodecs`` refuses a codestream whose basic
info says otherwise before libjxl decodes any frame (a 100-byte codestream can claim 2**30 x 2**30
pixels); zlib never inflates past the header's size. The container's pixel hash checks the values.
"""

from __future__ import annotations

import zlib

import imagecodecs
import numpy as np

from codec.defaults import DEFAULT_JXL_EFFORT, JXL_EFFORTS
from codec.errors import CorruptFileError


def jxl_supports(pixels: np.ndarray) -> bool:
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return pixels.dtype.name in ("bool", "uint8", "uint16") and 1 <= channels <= 4


def check_jxl_effort(effort: int) -> int:
    """``effort`` if libjxl accepts it (1..10, as ``cjxl -e``), else ``ValueError``: libjxl itself
    would clamp or refuse it deep inside a batch, after the costly learned coding."""
    if isinstance(effort, bool) or not isinstance(effort, (int, np.integer)) or effort not in JXL_EFFORTS:
        span = f"{JXL_EFFORTS.start}..{JXL_EFFORTS.stop - 1}"
        raise ValueError(f"JPEG-XL effort must be an integer in {span}, not {effort!r}")
    return int(effort)


def jxl_encode(pixels: np.ndarray, effort: int = DEFAULT_JXL_EFFORT) -> bytes:
    """JPEG-XL lossless at libjxl ``effort`` (1 fastest .. 10 smallest; the file decodes the same
    way whatever the effort)."""
    arr = pixels.astype(np.uint8) if pixels.dtype == bool else pixels
    level = check_jxl_effort(effort)
    return bytes(imagecodecs.jpegxl_encode(np.ascontiguousarray(arr), lossless=True, effort=level))


def jxl_decode(data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The image of a JPEG-XL payload, which must be exactly ``shape`` of ``dtype``.

    ``out`` is allocated with ``np.empty`` (pages untouched until libjxl writes them), so a payload
    refused for its size costs no memory; ``imagecodecs`` checks the codestream's shape against it
    as soon as it has read the basic info, and its sample type through the item size."""
    want = np.dtype(np.uint8 if dtype == np.bool_ else dtype)
    out = np.empty(shape, dtype=want)
    try:
        arr = imagecodecs.jpegxl_decode(data, out=out)
    except Exception as exc:
        raise CorruptFileError(f"JPEG-XL payload does not decode to {shape} {dtype}: {exc}") from exc
    if arr.dtype != want or arr.size != out.size:
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


# The classical coders' pixel decoders (``codec.registry.PixelDecoder``): no model, no torch.


def decode_jxl_file(header, container, payload: bytes, models, device: str) -> np.ndarray:
    return jxl_decode(payload, header.shape, np.dtype(header.dtype))


def decode_zlib_file(header, container, payload: bytes, models, device: str) -> np.ndarray:
    return zlib_decode(payload, header.shape, np.dtype(header.dtype))


def transcode_jpeg(data: bytes) -> bytes | None:
    """A JPEG's lossless JPEG-XL transcode (its DCT coefficients recoded, typically ~20% smaller),
    checked by rebuilding the JPEG from it: the very same bytes, or None (a JPEG feature libjxl
    cannot transcode, a file that would not get smaller). ``restore_jpeg`` gives the JPEG back."""
    try:
        blob = bytes(imagecodecs.jpegxl_encode_jpeg(data))
        exact = bytes(imagecodecs.jpegxl_decode_jpeg(blob)) == data
    except Exception:  # libjxl refuses some JPEGs (arithmetic coding, odd markers)
        return None
    return blob if exact and len(blob) < len(data) else None


def restore_jpeg(blob: bytes) -> bytes:
    """The JPEG a ``transcode_jpeg`` file was made from, bit for bit."""
    return bytes(imagecodecs.jpegxl_decode_jpeg(blob))
