"""The ``HEAD`` section and ``info``: what a ``.cllc`` file holds, read without torch.

Split from ``codec.api`` (which re-exports ``Header``, ``KNOWN_CRITICAL``, ``info`` and
``read_header``) so that ``callic info FILE``, archive status and any tool that only looks at files
start in well under a second: this module needs the container, the raster mode table and numpy,
never torch or Ray.

HEAD payload (little-endian)::

    u8 coder (1 mgcf, 2 jxl, 3 zlib, 4 cca: lossy; ``codec.registry``) | u32 height | u32 width
    u8 channels | u8 dtype code
    u8 len + mode (ASCII) | 32 B hash of the image | 32 B SHA-256 of the model file (zeros unless
    mgcf or cca) | u16 patch | u16 patches per stream
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

from codec import registry
from codec.container import HEAD, Container, parse
from codec.errors import CorruptFileError, UnsupportedError
from codec.raster import layout_problem

# The ids of this package's coders (``codec.registry`` holds what each one is).
CODER_MGCF, CODER_JXL, CODER_ZLIB, CODER_CCA = 1, 2, 3, 4
DTYPES = {1: "bool", 2: "uint8", 3: "uint16", 4: "int32", 5: "float32"}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
_ITEMSIZE = {"bool": 1, "uint8": 1, "uint16": 2, "int32": 4, "float32": 4}
# The adapters' section tag (``codec.mgcf.adapters.SECTION``; that module needs torch, so it is named
# here too, and a test keeps the two equal).
ADAPTERS_SECTION = b"ADPT"
# The calibration scheme's section (``codec.mgcf.calibration.SECTION``, mirrored like ADPT): one byte,
# the scheme; absent means none. Critical: a decoder that does not know it must refuse the file.
CALIBRATION_SECTION = b"CALB"
KNOWN_CRITICAL = frozenset({HEAD, b"DATA", b"ALPH", b"PLTE", ADAPTERS_SECTION, CALIBRATION_SECTION})
MAX_CHANNELS = 16
KNOWN_CALIBRATION_SCHEMES = (1,)  # codec.mgcf.calibration.SCHEME; a test keeps them equal
# Largest image a decoder accepts, in bytes of pixels (1 GiB, e.g. 350 megapixels of RGB); a file
# claiming more is refused before anything is allocated. Raise it with CALLIC_MAX_PIXEL_BYTES.
MAX_PIXEL_BYTES = int(os.environ.get("CALLIC_MAX_PIXEL_BYTES", 1 << 30))

_HEAD = struct.Struct("<BIIBB")
_TAIL = struct.Struct("<32s32sHH")


@dataclass(frozen=True)
class Header:
    coder: int
    height: int
    width: int
    channels: int
    dtype: str
    mode: str
    pixel_hash: bytes
    model_hash: bytes
    patch: int
    patches_per_stream: int

    def to_bytes(self) -> bytes:
        mode = self.mode.encode("ascii")
        return (
            _HEAD.pack(self.coder, self.height, self.width, self.channels, DTYPE_CODES[self.dtype])
            + bytes([len(mode)])
            + mode
            + _TAIL.pack(self.pixel_hash, self.model_hash, self.patch, self.patches_per_stream)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        try:
            coder, h, w, c, dt = _HEAD.unpack_from(data, 0)
            n = data[_HEAD.size]
            mode = data[_HEAD.size + 1 : _HEAD.size + 1 + n].decode("ascii")
            tail = _HEAD.size + 1 + n
            if len(data) != tail + _TAIL.size or len(mode) != n:
                raise ValueError("length")
            ph, mh, patch, per = _TAIL.unpack_from(data, tail)
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
            raise CorruptFileError("malformed HEAD section") from exc
        known = registry.find_coder(coder)
        if known is None:
            raise UnsupportedError(f"unknown coder id {coder}")
        if dt not in DTYPES:
            raise CorruptFileError(f"unknown sample type {dt}")
        if h < 1 or w < 1 or not 1 <= c <= MAX_CHANNELS:
            raise CorruptFileError(f"impossible image size {h}x{w}x{c}")
        if h * w * c * _ITEMSIZE[DTYPES[dt]] > MAX_PIXEL_BYTES:
            raise UnsupportedError(
                f"image of {h}x{w}x{c} exceeds the decode limit of {MAX_PIXEL_BYTES} bytes "
                "(set CALLIC_MAX_PIXEL_BYTES to raise it)"
            )
        problem = layout_problem(mode, DTYPES[dt], c)
        if problem is not None:
            raise CorruptFileError(f"HEAD: {problem}")
        if known.modes and mode not in known.modes:
            raise CorruptFileError(f"HEAD: coder {known.name} does not code {mode} images")
        return cls(coder, h, w, c, DTYPES[dt], mode, ph, mh, patch, per)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.height, self.width) if self.channels == 1 else (self.height, self.width, self.channels)


def calibration_scheme(container: Container) -> int:
    """The calibration scheme a file records (0 when it has no CALB section); a section that is
    not exactly one known scheme byte makes the file corrupt or unsupported, before any decoding."""
    section = container.get(CALIBRATION_SECTION)
    if section is None:
        return 0
    if len(section) != 1 or section[0] == 0:
        raise CorruptFileError(f"CALB section of {len(section)} bytes: not one calibration scheme byte")
    if section[0] not in KNOWN_CALIBRATION_SCHEMES:
        raise UnsupportedError(f"calibration scheme {section[0]} is not known to this version of callic")
    return section[0]


def read_header(data: bytes) -> tuple[Header, Container]:
    """The checked HEAD and every section of a file (CRCs, lengths, critical tags), no pixels."""
    container = parse(data, KNOWN_CRITICAL)
    return Header.from_bytes(container.require(HEAD)), container


def info(data: bytes) -> dict[str, Any]:
    """What a file holds, without decoding the pixels.

    The rate is in one unit per kind of file, the one ``callic encode`` prints: a lossless file
    has ``bits_per_subpixel`` (bits per sample, the lossless literature's bpsp), a lossy one
    ``bits_per_pixel`` (bpp, as lossy codecs are compared), never both; ``lossy`` says which.
    """
    header, container = read_header(data)
    coder = registry.coder(header.coder)
    lossy = coder.lossy
    pixels = header.height * header.width
    rate = (
        {"bits_per_pixel": 8 * len(data) / pixels}
        if lossy
        else {"bits_per_subpixel": 8 * len(data) / (pixels * header.channels)}
    )
    return {
        "coder": coder.name,
        "width": header.width,
        "height": header.height,
        "channels": header.channels,
        "mode": header.mode,
        "dtype": header.dtype,
        "format_version": container.version,
        "bytes": len(data),
        **rate,
        "pixel_sha256": header.pixel_hash.hex(),
        "model_sha256": header.model_hash.hex() if coder.model else None,
        "lossy": lossy,
        "patch": header.patch or None,
        "patches_per_stream": header.patches_per_stream or None,
        "adapted": container.get(ADAPTERS_SECTION) is not None,
        "calibration": calibration_scheme(container),
        "sections": {t.decode(): len(p) for t, p in container.sections},
    }
