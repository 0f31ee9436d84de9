"""Writing a ``.cllc`` file: its HEAD and sections, for every coder (``codec.registry``).

Torch-free, like ``codec.header`` which reads them; the section layout is in ``codec.api``.
"""

from __future__ import annotations

from codec.container import HEAD, Container
from codec.header import ADAPTERS_SECTION, CALIBRATION_SECTION, Header
from codec.raster import Raster, raster_hash


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
