"""Image files <-> ``Raster``: Pillow for PNG, TIFF, PPM/PGM/PBM, BMP (and anything else it reads),
imagecodecs for 16-bit colour PNG and TIFF and our own PNM parser for 16-bit PPM, which Pillow
would silently cut to 8 bits.

ICC profile, EXIF and XMP are read into the raster and written back where the format can hold
them (PNG and TIFF hold all three; PPM and BMP none; a 16-bit colour TIFF keeps only the ICC
profile). A PNG's other metadata chunks (text, pHYs, gAMA, tIME, ...) are carried verbatim.

``read_image`` gives exact pixels or refuses: a file with several frames, or one whose pixels or
metadata would not come back exactly when written in its own format (checked with the
independent readers of ``codec.sourcecheck``: a PPM of maxval 1000, a uint32 or int16 TIFF,
extra samples, ...), is an ``InexactReadError``; ``callic archive`` stores such files as they are.
"""

from __future__ import annotations

import io
import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image, PngImagePlugin, TiffImagePlugin, UnidentifiedImageError

from codec import sourcecheck
from codec.errors import CorruptFileError, ImageReadError, UnsupportedError
from codec.files import read_regular_file
from codec.raster import Raster

FORMATS = {
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".ppm": "PPM",
    ".pgm": "PPM",
    ".pbm": "PPM",
    ".pnm": "PPM",
    ".bmp": "BMP",
}
_XMP_TIFF_TAG = 700
# Largest input file read (bytes); set CALLIC_MAX_INPUT_BYTES to change it.
MAX_INPUT_BYTES = int(os.environ.get("CALLIC_MAX_INPUT_BYTES", 1 << 31))
# PNG metadata chunks carried verbatim (``Raster.png_chunks``): those that must precede PLTE go
# right after IHDR, the others before the first IDAT. Unknown chunks are carried only when they
# are safe to copy (lower-case fourth letter); the others may describe the IDAT bytes themselves.
_PNG_BEFORE_PLTE = frozenset({b"cHRM", b"gAMA", b"sBIT", b"sRGB", b"cICP", b"mDCV", b"cLLI"})
_PNG_KNOWN = _PNG_BEFORE_PLTE | {b"bKGD", b"hIST", b"pHYs", b"sPLT", b"tEXt", b"zTXt", b"iTXt", b"tIME", b"eXIf"}
_PNG_KNOWN |= {b"oFFs", b"pCAL", b"sCAL", b"sTER", b"tRNS"}
_PNG_NOT_CARRIED = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"iCCP", b"tRNS", b"acTL", b"fcTL", b"fdAT"})
_XMP_KEYWORD = b"XML:com.adobe.xmp"
_TIFF_DESCRIPTION_TAGS = (270, 271, 272, 274, 282, 283, 296, 305, 306, 315, 316, 33432)


class InexactReadError(UnsupportedError):
    """An image this reader cannot give back exactly (several frames, a sample format or maxval a
    raster cannot hold, metadata it would drop): ``callic archive`` stores such files as they are."""


def _is_16bit_colour(data: bytes, im: Image.Image) -> bool:
    if im.mode not in ("RGB", "RGBA"):
        return False
    if im.format == "PNG":
        return data[24] == 16  # IHDR bit depth
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))
        return max(bits if isinstance(bits, tuple) else (bits,)) > 8
    return False


def _encode_transparency(value) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return json.dumps({"bytes": value.hex()}).encode()
    return json.dumps({"value": value}).encode()


def _sample_value(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 16


def decode_transparency(data: bytes | None) -> int | tuple[int, int, int] | bytes | None:
    """A ``trns`` section -> Pillow's ``transparency`` info: a palette index or gray level, an RGB
    triple, or per-entry palette alphas. Anything else is ``CorruptFileError`` (a file can hold
    any bytes there, and a writer would choke on them)."""
    if not data:
        return None
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CorruptFileError(f"trns section is not JSON: {exc}") from exc
    if isinstance(obj, dict) and obj.keys() == {"bytes"} and isinstance(obj["bytes"], str):
        try:
            alphas = bytes.fromhex(obj["bytes"])
        except ValueError as exc:
            raise CorruptFileError("trns section holds bad hex") from exc
        if len(alphas) <= 256:
            return alphas
    if isinstance(obj, dict) and obj.keys() == {"value"}:
        value = obj["value"]
        if _sample_value(value):
            return value
        if isinstance(value, list) and len(value) == 3 and all(map(_sample_value, value)):
            return tuple(value)
    raise CorruptFileError("trns section is not a transparency of a shape this callic writes")


def from_pil(im: Image.Image, source: bytes | None = None) -> Raster:
    """A Pillow image (and, if given, the file bytes it came from) -> Raster."""
    keep_trns = False
    if source is not None and _is_16bit_colour(source, im):
        decoder = imagecodecs.png_decode if im.format == "PNG" else imagecodecs.tiff_decode
        pixels = np.asarray(decoder(source))
        if pixels.dtype != np.uint16 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
            raise ImageReadError(f"unexpected 16-bit colour layout {pixels.shape} {pixels.dtype}")
        # libpng expands an RGB file's tRNS colour into an alpha channel: keep RGB and the tRNS chunk.
        keep_trns = im.format == "PNG" and source[25] == 2 and pixels.shape[2] == 4
        raster = Raster.from_array(pixels[..., :3] if keep_trns else pixels)
    elif source is not None and im.format == "PPM" and im.mode in ("RGB", "I"):
        raster = _pnm_raster(im, source)
    else:
        mode = im.mode
        pixels = np.asarray(im)
        if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
            pixels, mode = pixels.astype(np.uint16), "I;16"
        raster = Raster.from_array(pixels, mode)
        if mode in ("P", "PA") and im.palette is not None:
            raster.palette_mode = im.palette.mode
            raster.palette = bytes(im.palette.tobytes())
    info = im.info
    raster.icc_profile = info.get("icc_profile") or None
    exif = info.get("exif")
    raster.exif = exif if isinstance(exif, bytes) and exif else None
    if im.format == "TIFF" and raster.exif is None:
        raster.exif = _tiff_description_tags(im)
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
    raster.xmp = (xmp.encode() if isinstance(xmp, str) else xmp) or None
    raster.transparency = None if raster.mode.endswith(";16") else _encode_transparency(info.get("transparency"))
    if im.format == "PNG" and source is not None:
        raster.png_chunks = _carried_chunks(source, keep_trns)
    return raster


def _tiff_description_tags(im: Image.Image) -> bytes | None:
    """A TIFF's own descriptive tags (description, make, resolution, date, ...) as an EXIF block,
    which the TIFF writer merges back into the directory; None if it has none."""
    tags, carried = im.getexif(), Image.Exif()
    for tag in _TIFF_DESCRIPTION_TAGS:
        if tag in tags:
            carried[tag] = tags[tag]
    return carried.tobytes() if len(carried) else None


def _pnm_raster(im: Image.Image, source: bytes) -> Raster:
    """A PPM/PGM of maxval 65535 as 16 bits (Pillow cuts colour to 8 bits, and gives gray as int32);
    other maxvals as Pillow reads them (the exactness check refuses the rescaled ones)."""
    if im.mode == "RGB" and source[1:2] in b"36":
        try:
            parsed = sourcecheck.facts(source)
        except sourcecheck.Unverifiable as exc:
            raise ImageReadError(str(exc)) from exc
        if parsed.meta["maxval"] == 65535:
            return Raster.from_array(parsed.pixels)
    pixels = np.asarray(im)
    if im.mode == "I" and pixels.min(initial=0) >= 0 and pixels.max(initial=0) <= 65535:
        return Raster.from_array(pixels.astype(np.uint16), "I;16")
    return Raster.from_array(pixels, im.mode)


def _carried_chunks(source: bytes, keep_trns: bool) -> bytes | None:
    """The PNG's metadata chunks to carry, as ``type | u32 BE length | payload`` records."""
    out = []
    for ctype, payload in sourcecheck.png_chunks(source):
        if (ctype in _PNG_NOT_CARRIED and not (keep_trns and ctype == b"tRNS")) or (
            ctype not in _PNG_KNOWN and not ctype[3] & 0x20
        ):
            continue
        out.append(ctype + struct.pack(">I", len(payload)) + payload)
    return b"".join(out) or None


def split_chunks(records: bytes | None) -> list[tuple[bytes, bytes]]:
    """``Raster.png_chunks`` -> (type, payload) pairs; ``CorruptFileError`` if malformed (it comes
    from a file, which can hold anything)."""
    out, pos = [], 0
    while records and pos < len(records):
        if pos + 8 > len(records):
            raise CorruptFileError("truncated PNG chunk record")
        ctype, (length,) = records[pos : pos + 4], struct.unpack_from(">I", records, pos + 4)
        if not ctype.isalpha() or not ctype.isascii() or pos + 8 + length > len(records):
            raise CorruptFileError("malformed PNG chunk record")
        out.append((ctype, records[pos + 8 : pos + 8 + length]))
        pos += 8 + length
    return out


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def _splice_png(png: bytes, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """``png`` with ``chunks`` inserted where the PNG rules put them (after IHDR or before IDAT)."""
    if not chunks:
        return png
    early = b"".join(_png_chunk(t, p) for t, p in chunks if t in _PNG_BEFORE_PLTE or t == b"iCCP")
    late = b"".join(_png_chunk(t, p) for t, p in chunks if t not in _PNG_BEFORE_PLTE and t != b"iCCP")
    after_ihdr = len(sourcecheck.PNG_SIGNATURE) + 25
    first_idat = after_ihdr
    for ctype, payload in sourcecheck.png_chunks(png)[1:]:
        if ctype == b"IDAT":
            break
        first_idat += 12 + len(payload)
    return png[:after_ihdr] + early + png[after_ihdr:first_idat] + late + png[first_idat:]


def _has_chunk(chunks: list[tuple[bytes, bytes]], ctype: bytes, prefix: bytes = b"") -> bool:
    return any(t == ctype and p.startswith(prefix) for t, p in chunks)


def read_source(path: str | Path) -> bytes:
    """A regular file's bytes, at most ``MAX_INPUT_BYTES``: a FIFO or a device (``/dev/zero``)
    is refused before anything is read (``ImageReadError``: no image there), and a file growing
    past the cap while read is refused. A file that cannot be opened at all (missing, refused)
    is an ``OSError`` naming it (the CLI's exit 1, "file not found", not 2, "not an image")."""
    try:
        return read_regular_file(path, MAX_INPUT_BYTES, ImageReadError, f"cannot read image {path}")
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read {path}: {exc.strerror or exc}") from None


def read_image(path: str | Path | bytes, name: str | None = None) -> Raster:
    """Read an image file (path or bytes; ``name`` names it in errors): ``ImageReadError`` if it
    cannot be read, ``InexactReadError`` if its pixels or metadata would not come back exactly."""
    name = name or (str(path) if not isinstance(path, bytes) else "<bytes>")
    data = path if isinstance(path, bytes) else read_source(path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise InexactReadError(
                    f"{name} holds {frames} frames and callic codes one image; "
                    "`callic archive` stores multi-frame files byte for byte"
                )
            im.load()
            raster, fmt = from_pil(im, data), im.format
    except (ImageReadError, UnsupportedError, CorruptFileError):
        raise
    except UnidentifiedImageError as exc:
        fmt = _independently_readable(data)
        if fmt is not None:
            raise InexactReadError(
                f"{name}: callic's reader cannot read this {fmt} (its sample format or layout); "
                "`callic archive` stores such files byte for byte"
            ) from exc
        raise ImageReadError(f"cannot read image {name}: not an image file in a format callic reads") from exc
    except Image.DecompressionBombError as exc:  # Pillow's limit is its caller's: callic's commands raise it
        raise ImageReadError(f"cannot read image {name}: {exc} (PIL.Image.MAX_IMAGE_PIXELS)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"cannot read image {name}: {exc}") from exc
    if fmt in FORMATS.values():
        _check_exact(data, raster, fmt, name)
    return raster


def _independently_readable(data: bytes) -> str | None:
    """The format of a file Pillow cannot open but the independent readers can (a float64 TIFF)."""
    try:
        return sourcecheck.facts(data).fmt
    except sourcecheck.Unverifiable:
        return None


def _pnm_maxval(data: bytes) -> int | None:
    try:
        return sourcecheck.facts(data).meta.get("maxval")
    except sourcecheck.Unverifiable:
        return None


def _check_exact(data: bytes, raster: Raster, fmt: str, name: str) -> None:
    """Refuse ``raster`` unless writing it back as ``fmt`` gives what the independent readers see in
    the source: the same samples (dtype, shape, values), frames and metadata."""
    maxval = _pnm_maxval(data) if fmt == "PPM" else None
    if maxval not in (None, 1, 255, 65535):
        reason = f"maxval {maxval} (callic holds samples of maxval 1, 255 or 65535, and would rescale these)"
    else:
        try:
            reason = sourcecheck.difference(data, write_image_bytes(raster, fmt))
        except (UnsupportedError, CorruptFileError) as exc:
            reason = f"it cannot be written back as {fmt} ({exc})"
    if reason is not None:
        raise InexactReadError(
            f"{name}: callic cannot give this {fmt} back exactly: {reason}; "
            "`callic archive` stores such files byte for byte"
        )


def to_pil(raster: Raster) -> Image.Image:
    if raster.mode.endswith(";16") and raster.channels > 1:
        raise UnsupportedError("Pillow cannot hold 16-bit colour; write it with write_image to .png or .tif")
    natural = Image.fromarray(raster.pixels)  # Pillow refuses some explicit modes (e.g. "I;16")
    im = natural if natural.mode == raster.mode else Image.fromarray(raster.pixels, raster.mode)
    if raster.palette is not None:
        im.putpalette(raster.palette, rawmode=raster.palette_mode or "RGB")
    transparency = decode_transparency(raster.transparency)
    if transparency is not None:
        im.info["transparency"] = transparency
    return im


def image_format(path: str | Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UnsupportedError(
            f"cannot write {Path(path).suffix or 'files without an extension'}; use one of {', '.join(sorted(FORMATS))}"
        )
    return fmt


def _merge_exif(tags: TiffImagePlugin.ImageFileDirectory_v2, exif_block: bytes) -> None:
    """Add an EXIF block's tags to a TIFF's directory; ``UnsupportedError`` when the block cannot
    be parsed (a PNG output keeps it as the bytes it is, a TIFF needs its tags)."""
    exif = Image.Exif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns, then skips, on damaged tags
            exif.load(exif_block)
            for tag, value in exif.items():
                tags[tag] = value
    except (SyntaxError, ValueError, TypeError, KeyError, OSError, struct.error) as exc:
        raise UnsupportedError(f"cannot write the EXIF block into a TIFF ({exc}); write .png to keep it") from exc


def write_image_bytes(raster: Raster, fmt: str) -> bytes:
    """Encode ``raster`` in ``fmt`` (PNG, TIFF, PPM, BMP), metadata included where it fits."""
    chunks = split_chunks(raster.png_chunks) if fmt == "PNG" else []
    if raster.mode.endswith(";16") and raster.channels > 1:
        return _write_16bit_colour(raster, fmt, chunks)
    im = to_pil(raster)
    kwargs: dict = {}
    if fmt in ("PNG", "TIFF"):
        if raster.icc_profile:
            kwargs["icc_profile"] = raster.icc_profile
        if raster.exif:
            kwargs["exif"] = raster.exif
    if fmt == "PNG":
        if _has_chunk(chunks, b"eXIf"):
            kwargs.pop("exif", None)  # carried verbatim below
        if raster.xmp and not _has_chunk(chunks, b"iTXt", _XMP_KEYWORD + b"\0"):
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", raster.xmp.decode("utf-8", "replace"))
            kwargs["pnginfo"] = info
        if "transparency" in im.info:
            kwargs["transparency"] = im.info["transparency"]
    if fmt == "TIFF" and (raster.xmp or raster.exif):
        # A TIFF's EXIF tags live in its own directory: merge them with XMP into one tiffinfo.
        tags = TiffImagePlugin.ImageFileDirectory_v2()
        if raster.exif:
            _merge_exif(tags, raster.exif)
            kwargs.pop("exif")
        if raster.xmp:
            tags[_XMP_TIFF_TAG] = raster.xmp
            tags.tagtype[_XMP_TIFF_TAG] = 1  # BYTE
        kwargs["tiffinfo"] = tags
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:  # the last two: odd EXIF tags
        raise UnsupportedError(f"cannot write a {raster.mode} image as {fmt}: {exc}") from exc
    return _splice_png(buf.getvalue(), chunks) if fmt == "PNG" else buf.getvalue()


def _write_16bit_colour(raster: Raster, fmt: str, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """16-bit RGB(A), which Pillow cannot hold: libpng plus the metadata chunks, libtiff with the
    ICC profile, or a PPM of maxval 65535 (RGB only)."""
    if fmt == "PNG":
        extra = []
        if raster.icc_profile:
            extra.append((b"iCCP", b"ICC Profile\0\0" + zlib.compress(raster.icc_profile)))
        if raster.exif and not _has_chunk(chunks, b"eXIf"):
            extra.append((b"eXIf", raster.exif))
        if raster.xmp and not _has_chunk(chunks, b"iTXt", _XMP_KEYWORD + b"\0"):
            extra.append((b"iTXt", _XMP_KEYWORD + b"\0\0\0\0\0" + raster.xmp))
        return _splice_png(bytes(imagecodecs.png_encode(raster.pixels)), extra + chunks)
    if fmt == "TIFF":
        return bytes(imagecodecs.tiff_encode(raster.pixels, iccprofile=raster.icc_profile or None))
    if fmt == "PPM" and raster.channels == 3:
        h, w = raster.height, raster.width
        return f"P6\n{w} {h}\n65535\n".encode() + raster.pixels.astype(">u2").tobytes()
    raise UnsupportedError(f"{fmt} cannot hold 16-bit {raster.mode[:-3]}; write .png or .tif")


def write_image(raster: Raster, path: str | Path) -> None:
    Path(path).write_bytes(write_image_bytes(raster, image_format(path)))
