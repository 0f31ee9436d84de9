"""Writing a ``.cllc`` file for any coder (``codec.registry``): what may be written, its HEAD
and its sections.

Torch-free, like ``codec.header`` and ``codec.reading`` which read them; the section layout is in
``codec.api``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from codec.container import HEAD, Container
from codec.errors import CorruptFileError, UnsupportedError
from codec.header import ADAPTERS_SECTION, CALIBRATION_SECTION, MAX_CHANNELS, MAX_PIXEL_BYTES, Header
from codec.images import decode_transparency, from_pil
from codec.raster import Raster, layout_problem, palette_problem, raster_hash


def as_raster(image: Any) -> Raster:
    """A numpy array, ``Raster`` or Pillow image as a ``Raster`` (what every encoder takes)."""
    if isinstance(image, Raster):
        return image
    if isinstance(image, np.ndarray):
        return Raster.from_array(image)
    return from_pil(image)  # Pillow images


def check_encodable(raster: Raster) -> None:
    """``UnsupportedError`` for an image whose file a decoder would refuse: a mode that does not
    fit its pixels, a bad palette or transparency, or more pixel bytes than the decode limit.
    Refused before any coding, so that nothing is stored that cannot come back."""
    h, w, c = raster.height, raster.width, raster.channels
    if h < 1 or w < 1 or not 1 <= c <= MAX_CHANNELS or h >= 1 << 32 or w >= 1 << 32:
        raise UnsupportedError(f"cannot code an image of {h}x{w}x{c}")
    if raster.pixels.nbytes > MAX_PIXEL_BYTES:
        raise UnsupportedError(
            f"image of {h}x{w}x{c} {raster.pixels.dtype} holds {raster.pixels.nbytes} bytes of pixels, more than "
            f"the decode limit of {MAX_PIXEL_BYTES} (CALLIC_MAX_PIXEL_BYTES, where it is decoded, must allow it)"
        )
    problem = layout_problem(raster.mode, raster.pixels.dtype.name, c)
    if problem is None and raster.palette is not None:
        problem = palette_problem(raster.mode, raster.palette_mode or "RGB", raster.palette)
    if problem is not None:
        raise UnsupportedError(f"cannot code this image: {problem}")
    try:
        decode_transparency(raster.transparency)
    except CorruptFileError as exc:
        raise UnsupportedError(f"cannot code this image: {exc}") from exc


def file_header(raster: Raster, coder: int, model_hash: bytes = bytes(32), patch: int = 0, per: int = 0) -> Header:
    """The HEAD of a file of ``raster`` coded by ``coder`` (a ``codec.registry`` id), with the
    hash a decoder checks its result against."""
    dtype = raster.pixels.dtype.name
    return Header(
        coder,
        raster.height,
        raster.width,
        raster.channels,
        dtype,
        raster.mode,
        raster_hash(raster),
        model_hash,
        patch,
        per,
    )


def write_file(
    raster: Raster,
    header: Header,
    data: bytes,
    *,
    alpha: bytes | None = None,
    section: bytes | None = None,
    calibration: int = 0,
) -> bytes:
    """The ``.cllc`` bytes: HEAD, ALPH (learned RGBA), PLTE, the ancillary metadata, ADPT (the
    adapters ``section``), CALB (a calibrated learned file), DATA. Every codec writes its files
    here, so each carries the palette and metadata ``codec.decode`` gives back."""
    container = Container()
    container.add(HEAD, header.to_bytes())
    if alpha is not None:
        container.add(b"ALPH", alpha)
    if raster.palette is not None:
        pm = (raster.palette_mode or "RGB").encode("ascii")
        container.add(b"PLTE", bytes([len(pm)]) + pm + raster.palette)
    for tag, value in (
        (b"iccp", raster.icc_profile),
        (b"exif", raster.exif),
        (b"xmp ", raster.xmp),
        (b"trns", raster.transparency),
        (b"pngc", raster.png_chunks),
    ):
        if value:
            container.add(tag, value)
    if section is not None:
        container.add(ADAPTERS_SECTION, section)  # before the image: the decoder merges first
    if calibration:
        container.add(CALIBRATION_SECTION, bytes([calibration]))
    container.add(b"DATA", data)
    return container.to_bytes()
