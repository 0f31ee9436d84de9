"""A third codec in one module, for the tests: raw pixels deflated with zlib at a chosen level.

It is what adding a codec takes (``codec.registry``): a pixel decoder, a ``Codec`` whose encoder
writes ``.cllc`` files through ``codec.fileformat``, and one registry line for each table. Nothing
else in the package names it; ``$CALLIC_CODECS=tests.toycodec`` makes every process (Ray
workers too) import this module, and so know the codec.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

import codec
from codec import fallback, registry
from codec.errors import VerificationError
from codec.fileformat import file_header, write_file
from codec.raster import Raster
from codec.report import EncodeReport
from codec.settings import Settings

TOY_ID = 250  # a coder id no shipped coder uses
NAME = "toy-zlib"


def decode_pixels(header, container, payload: bytes, models, device: str) -> np.ndarray:
    return fallback.zlib_decode(payload, header.shape, np.dtype(header.dtype))


@dataclass(frozen=True)
class ToySettings(Settings):
    level: int = 6


class ToyEncoder:
    def __init__(self, settings: ToySettings) -> None:
        self.settings = settings

    def encode_many(self, rasters: list[Raster], *, verify: bool) -> list[tuple[bytes, EncodeReport]]:
        out = []
        for raster in rasters:
            start = time.perf_counter()
            pixels = np.ascontiguousarray(raster.pixels)
            data = zlib.compress(pixels.astype(pixels.dtype.newbyteorder("<")).tobytes(), self.settings.level)
            blob = write_file(raster, file_header(raster, TOY_ID), data)
            report = EncodeReport(bytes=len(blob), coder=NAME, timings={"coding_s": time.perf_counter() - start})
            report.extra_facts["zlib_level"] = str(self.settings.level)  # a fact only this codec has
            if verify and not np.array_equal(self.decode(blob).pixels, raster.pixels):
                raise VerificationError("toy file does not decode to its image")
            out.append((blob, report))
        return out

    def fingerprint(self) -> dict[str, str]:
        return {}  # no model

    def decode(self, data: bytes) -> Raster:
        return codec.decode(data)


@dataclass(frozen=True)
class ToyCodec:
    name: str = NAME
    settings_type: type = ToySettings

    def open(self, settings: Any, device: str, lazy: bool = False) -> ToyEncoder:
        return ToyEncoder(settings)


TOY = ToyCodec()
registry.register_coder(registry.Coder(TOY_ID, NAME, (), "tests.toycodec:decode_pixels"))
registry.register_codec(registry.CodecEntry(NAME, "tests.toycodec:TOY", "raw pixels through zlib (a test codec)"))
