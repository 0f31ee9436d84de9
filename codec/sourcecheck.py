"""What an image file *is*, read by a second path that shares no code with ``codec.images``.

The archive must never store a file whose restore would differ from it. Checking that by reading
the source and the restored file with our own reader (Pillow) is blind to whatever that reader
loses: a 16-bit PPM read as 8 bits reads back as the same 8 bits. So the facts compared here come
from other readers: libpng and libtiff (through imagecodecs) and imagecodecs' BMP decoder for the
pixels, and small parsers of our own for PNM files, PNG chunks and TIFF tags.

``facts(data)`` gives pixels (in the reader's own dtype and shape), the frame or page count, and
the metadata a restore must keep; ``difference(source, restored)`` names the first fact that
differs, or None when the restored bytes hold exactly what the source holds.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import imagecodecs
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_PAGES = 4096  # a TIFF claiming more directories than this is not checked (and so passed through)
# PNG chunks that are the image itself; every other chunk is metadata that must survive.
_PNG_IMAGE_CHUNKS = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"iCCP", b"tRNS"})
_PNG_ANIMATION_CHUNKS = frozenset({b"acTL", b"fcTL", b"fdAT"})
# TIFF tags compared between source and restore: what the samples mean, and the metadata.
_TIFF_META_TAGS = (262, 270, 271, 272, 274, 282, 283, 296, 306, 315, 316, 320, 33432, 700, 34675, 34665, 34853)
_TIFF_SUBIFD_TAGS = frozenset({34665, 34853})  # EXIF and GPS directories: compared by content
_TIFF_TYPES = {1: "B", 2: "s", 3: "H", 4: "I", 5: "II", 6: "b", 7: "s", 8: "h", 9: "i", 10: "ii", 11: "f", 12: "d"}
_TIFF_TYPES.update({13: "I", 16: "Q", 17: "q", 18: "Q"})


class Unverifiable(ValueError):
    """The independent readers cannot read this file, so nothing about it can be promised."""


@dataclass
class Facts:
    fmt: str  # PNG, TIFF, PPM or BMP
    pixels: np.ndarray
    frames: int = 1
    meta: dict[str, Any] = field(default_factory=dict)


def sniff(data: bytes) -> str | None:
    """The writable format these bytes are in, by their magic number; None for any other."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "TIFF"
    if data[:2] == b"BM":
        return "BMP"
    if len(data) >= 2 and data[0:1] == b"P" and data[1:2] in b"123456":
        return "PPM"
    return None


def facts(data: bytes) -> Facts:
    """The independent readers' view of a PNG, TIFF, PNM or BMP file; ``Unverifiable`` if none reads it."""
    fmt = sniff(data)
    reader = {"PNG": _png_facts, "TIFF": _tiff_facts, "PPM": _pnm_facts, "BMP": _bmp_facts}.get(fmt or "")
    if reader is None:
        raise Unverifiable("not a PNG, TIFF, PNM or BMP file")
    try:
        return reader(data)
    except Unverifiable:
        raise
    except Exception as exc:  # a reader's own error: the file is outside what it understands
        raise Unverifiable(f"{fmt} reader: {exc}") from exc


def difference(source: bytes, restored: bytes) -> str | None:
    """The first way ``restored`` differs from ``source`` under the independent readers, or None."""
    try:
        a = facts(source)
    except Unverifiable as exc:
        return f"the source cannot be checked ({exc})"
    try:
        b = facts(restored)
    except Unverifiable as exc:
        return f"the restored file cannot be checked ({exc})"
    return compare(a, b)


def compare(a: Facts, b: Facts) -> str | None:
    """The first fact of ``b`` that differs from ``a`` (format, frames, dtype, shape, values, metadata)."""
    if a.fmt != b.fmt:
        return f"format {a.fmt} becomes {b.fmt}"
    if a.frames != b.frames:
        return f"{a.frames} frames become {b.frames}"
    pa, pb = a.pixels, b.pixels
    if pa.dtype != pb.dtype or pa.shape != pb.shape:
        return f"samples {pa.dtype} {pa.shape} become {pb.dtype} {pb.shape}"
    if not np.array_equal(pa, pb):
        return f"{int(np.count_nonzero(pa != pb))} sample values change"
    for key in sorted(set(a.meta) | set(b.meta)):
        if a.meta.get(key) != b.meta.get(key):
            return f"{key} changes ({_short(a.meta.get(key))} -> {_short(b.meta.get(key))})"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- PNG


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk up to IEND; ``Unverifiable`` on a truncated chunk."""
    if not data.startswith(PNG_SIGNATURE):
        raise Unverifiable("no PNG signature")
    out, pos = [], len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if pos + 12 + length > len(data):
            raise Unverifiable(f"truncated {ctype!r} chunk")
        out.append((ctype, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
        if ctype == b"IEND":
            return out
    raise Unverifiable("no IEND chunk")


def _png_facts(data: bytes) -> Facts:
    chunks = png_chunks(data)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise Unverifiable("no IHDR chunk")
    ihdr = chunks[0][1]
    meta: dict[str, Any] = {"bit depth": ihdr[8], "colour type": ihdr[9]}
    frames = 1
    other: Counter = Counter()
    for ctype, payload in chunks[1:]:
        if ctype == b"acTL" and len(payload) == 8:
            frames = struct.unpack(">I", payload[:4])[0]
        elif ctype == b"iCCP":
            meta["ICC profile"] = zlib.decompress(payload[payload.index(b"\0") + 2 :])
        elif ctype == b"tRNS":
            meta["tRNS"] = True  # its values show in the expanded pixels
        elif ctype not in _PNG_IMAGE_CHUNKS and ctype not in _PNG_ANIMATION_CHUNKS:
            other[(ctype.decode("latin-1"), payload)] += 1
    meta["ancillary chunks"] = sorted(other.items())
    return Facts("PNG", np.asarray(imagecodecs.png_decode(data)), frames, meta)


# ---------------------------------------------------------------- TIFF


def _tiff_facts(data: bytes) -> Facts:
    if data[2:4] in (b"+\0", b"\0+"):
        raise Unverifiable("BigTIFF")
    order = "<" if data[:2] == b"II" else ">"
    offsets = _tiff_ifd_offsets(data, order)
    tags = _tiff_ifd(data, order, offsets[0])
    pixels = np.asarray(imagecodecs.tiff_decode(data))
    spp = _first(tags.get(277), 1)
    meta: dict[str, Any] = {
        "bits per sample": _per_sample(tags.get(258), spp, 1),
        "sample format": _per_sample(tags.get(339), spp, 1),
        "extra samples": tags.get(338, ()),
    }
    if tags.get(274) == (1,):
        del tags[274]  # orientation 1 is the default: the same image as none
    for tag in _TIFF_META_TAGS:
        if tag in tags:
            value = tags[tag]
            if tag in _TIFF_SUBIFD_TAGS:
                value = _tiff_ifd(data, order, _first(value, 0))
            meta[f"TIFF tag {tag}"] = value
    return Facts("TIFF", pixels, len(offsets), meta)


def _first(value: Any, default: int) -> int:
    return int(value[0]) if isinstance(value, tuple) and value else default


def _per_sample(value: Any, spp: int, default: int) -> tuple:
    if not value:
        return (default,) * spp
    return tuple(value) * spp if len(value) == 1 else tuple(value)


def _tiff_ifd_offsets(data: bytes, order: str) -> list[int]:
    """Offsets of every image file directory, following the chain (loops and overflows refused)."""
    offsets: list[int] = []
    (offset,) = struct.unpack_from(order + "I", data, 4)
    while offset:
        if offset in offsets or len(offsets) >= _MAX_PAGES or offset + 2 > len(data):
            raise Unverifiable("bad directory chain")
        offsets.append(offset)
        (count,) = struct.unpack_from(order + "H", data, offset)
        end = offset + 2 + 12 * count
        if end + 4 > len(data):
            raise Unverifiable("truncated directory")
        (offset,) = struct.unpack_from(order + "I", data, end)
    if not offsets:
        raise Unverifiable("no image directory")
    return offsets


def _tiff_ifd(data: bytes, order: str, offset: int) -> dict[int, Any]:
    """One directory's tags: text and bytes as bytes (trailing NULs dropped), numbers as tuples
    (rationals as Fractions), so that a SHORT and a LONG holding the same numbers compare equal."""
    if offset + 2 > len(data):
        raise Unverifiable("directory outside the file")
    (count,) = struct.unpack_from(order + "H", data, offset)
    tags: dict[int, Any] = {}
    for i in range(count):
        pos = offset + 2 + 12 * i
        if pos + 12 > len(data):
            raise Unverifiable("truncated directory")
        tag, typ, n = struct.unpack_from(order + "HHI", data, pos)
        code = _TIFF_TYPES.get(typ)
        if code is None:
            continue
        size = struct.calcsize(order + code) * n
        start = pos + 8 if size <= 4 else struct.unpack_from(order + "I", data, pos + 8)[0]
        if start + size > len(data):
            raise Unverifiable(f"tag {tag} points outside the file")
        raw = data[start : start + size]
        if code == "s":
            tags[tag] = raw.rstrip(b"\0") if typ == 2 else raw
        elif code in ("II", "ii"):
            v = struct.unpack(order + code[0] * (2 * n), raw)
            tags[tag] = tuple(Fraction(v[j], v[j + 1]) if v[j + 1] else (v[j], 0) for j in range(0, 2 * n, 2))
        else:
            tags[tag] = struct.unpack(order + code * n, raw)
    return tags


# ---------------------------------------------------------------- BMP


def _bmp_facts(data: bytes) -> Facts:
    if len(data) < 34:
        raise Unverifiable("truncated BMP header")
    header_size, bits, compression = struct.unpack_from("<I", data, 14)[0], data[28], data[30]
    meta = {"BMP header size": header_size, "bits per pixel": bits, "compression": compression}
    return Facts("BMP", np.asarray(imagecodecs.bmp_decode(data)), 1, meta)


# ---------------------------------------------------------------- PNM


def _pnm_tokens(data: bytes, count: int) -> tuple[list[int], int]:
    """The first ``count`` header numbers after the magic, skipping comments; and where the raster starts."""
    values, pos, n = [], 2, len(data)
    while len(values) < count:
        while pos < n and (data[pos : pos + 1].isspace() or data[pos : pos + 1] == b"#"):
            if data[pos : pos + 1] == b"#":
                end = data.find(b"\n", pos)
                pos = n if end < 0 else end
            pos += 1
        start = pos
        while pos < n and data[pos : pos + 1].isdigit():
            pos += 1
        if start == pos or pos - start > 10:
            raise Unverifiable("bad PNM header")
        values.append(int(data[start:pos]))
    if pos >= n or not data[pos : pos + 1].isspace():
        raise Unverifiable("bad PNM header end")
    return values, pos + 1


def _pnm_facts(data: bytes) -> Facts:
    """P1-P6 in the file's own terms: bits as bool (1 = black, as stored), gray and RGB samples as
    uint8 up to maxval 255 and uint16 above, never rescaled; maxval is a fact of its own."""
    magic = data[1] - ord("0")
    bilevel, channels = magic in (1, 4), 3 if magic in (3, 6) else 1
    (w, h, *rest), pos = _pnm_tokens(data, 2 if bilevel else 3)
    maxval = 1 if bilevel else rest[0]
    if w < 1 or h < 1 or not 1 <= maxval <= 65535:
        raise Unverifiable(f"impossible PNM size {w}x{h} or maxval {maxval}")
    samples = w * h * channels
    if magic == 4:
        row = (w + 7) // 8
        raw = np.frombuffer(data, np.uint8, row * h, pos) if pos + row * h <= len(data) else None
        if raw is None:
            raise Unverifiable("truncated PBM raster")
        pixels = np.unpackbits(raw.reshape(h, row), axis=1)[:, :w].astype(bool)
        end = pos + row * h
    elif magic in (5, 6):
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
        if pos + samples * dtype.itemsize > len(data):
            raise Unverifiable("truncated PNM raster")
        pixels = np.frombuffer(data, dtype, samples, pos).astype(dtype.newbyteorder("="))
        end = pos + samples * dtype.itemsize
    else:
        pixels, trailing = _pnm_ascii(data, pos, samples, bilevel)
        pixels = pixels.astype(bool) if bilevel else pixels.astype(np.uint8 if maxval <= 255 else np.uint16)
        end = len(data) - trailing
    if pixels.max(initial=0) > maxval:
        raise Unverifiable("PNM sample above maxval")
    shape = (h, w) if channels == 1 else (h, w, channels)
    meta = {"PNM kind": "bit" if bilevel else "gray" if channels == 1 else "rgb", "maxval": maxval}
    meta["bytes after the raster"] = len(data) - end
    return Facts("PPM", pixels.reshape(shape), 1, meta)


def _pnm_ascii(data: bytes, pos: int, samples: int, bilevel: bool) -> tuple[np.ndarray, int]:
    """Plain (ASCII) samples, and how many bytes of something else follow them."""
    text = data[pos:]
    if bilevel:  # P1 digits need no separators
        text = b" ".join(bytes([c]) for c in text if c in b"01")
    tokens = text.split(maxsplit=samples)
    if len(tokens) < samples or any(not t.isdigit() or len(t) > 5 for t in tokens[:samples]):
        raise Unverifiable("bad ASCII PNM raster")
    trailing = len(tokens[samples]) if len(tokens) > samples else 0
    return np.array([int(t) for t in tokens[:samples]], np.int64), trailing
