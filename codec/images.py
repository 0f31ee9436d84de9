"""Image files <-> ``Raster``: Pillow for PNG, TIFF, PPM/PGM/PBM, BMP (and anything else it reads),
imagecodecs for 16-bit colour PNG and TIFF, which Pillow would silently cut to 8 bits.

ICC profile, EXIF and XMP are read into the raster and written back where the format can hold
them (PNG and TIFF hold all three; PPM and BMP none; 16-bit colour files are written without them).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image, PngImagePlugin, TiffImagePlugin

from codec.errors import ImageReadError, UnsupportedError
from codec.raster import Raster

Image.MAX_IMAGE_PIXELS = 1 << 30  # refuse decompression bombs, allow big photos

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


def _decode_transparency(data: bytes | None):
    if not data:
        return None
    obj = json.loads(data)
    if "bytes" in obj:
        return bytes.fromhex(obj["bytes"])
    value = obj["value"]
    return tuple(value) if isinstance(value, list) else value


def from_pil(im: Image.Image, source: bytes | None = None) -> Raster:
    """A Pillow image (and, if given, the file bytes it came from) -> Raster."""
    if source is not None and _is_16bit_colour(source, im):
        decoder = imagecodecs.png_decode if im.format == "PNG" else imagecodecs.tiff_decode
        pixels = np.asarray(decoder(source))
        if pixels.dtype != np.uint16 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
            raise ImageReadError(f"unexpected 16-bit colour layout {pixels.shape} {pixels.dtype}")
        raster = Raster.from_array(pixels)
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
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
    raster.xmp = (xmp.encode() if isinstance(xmp, str) else xmp) or None
    raster.transparency = _encode_transparency(info.get("transparency"))
    return raster


def read_image(path: str | Path | bytes) -> Raster:
    """Read an image file (path or bytes); ``ImageReadError`` if it cannot be read."""
    try:
        data = path if isinstance(path, bytes) else Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return from_pil(im, data)
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read image {path if not isinstance(path, bytes) else '<bytes>'}: {exc}") from exc


def to_pil(raster: Raster) -> Image.Image:
    if raster.mode.endswith(";16") and raster.channels > 1:
        raise UnsupportedError("Pillow cannot hold 16-bit colour; write it with write_image to .png or .tif")
    natural = Image.fromarray(raster.pixels)  # Pillow refuses some explicit modes (e.g. "I;16")
    im = natural if natural.mode == raster.mode else Image.fromarray(raster.pixels, raster.mode)
    if raster.palette is not None:
        im.putpalette(raster.palette, rawmode=raster.palette_mode or "RGB")
    transparency = _decode_transparency(raster.transparency)
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


def write_image_bytes(raster: Raster, fmt: str) -> bytes:
    """Encode ``raster`` in ``fmt`` (PNG, TIFF, PPM, BMP), metadata included where it fits."""
    if raster.mode.endswith(";16") and raster.channels > 1:
        if fmt == "PNG":
            return bytes(imagecodecs.png_encode(raster.pixels))
        if fmt == "TIFF":
            return bytes(imagecodecs.tiff_encode(raster.pixels))
        raise UnsupportedError(f"{fmt} cannot hold 16-bit colour; write .png or .tif")
    im = to_pil(raster)
    kwargs: dict = {}
    if fmt in ("PNG", "TIFF"):
        if raster.icc_profile:
            kwargs["icc_profile"] = raster.icc_profile
        if raster.exif:
            kwargs["exif"] = raster.exif
    if fmt == "PNG":
        if raster.xmp:
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", raster.xmp.decode("utf-8", "replace"))
            kwargs["pnginfo"] = info
        if "transparency" in im.info:
            kwargs["transparency"] = im.info["transparency"]
    if fmt == "TIFF" and (raster.xmp or raster.exif):
        # A TIFF's EXIF tags live in its own directory: merge them with XMP into one tiffinfo.
        tags = TiffImagePlugin.ImageFileDirectory_v2()
        if raster.exif:
            exif = Image.Exif()
            exif.load(raster.exif)
            for tag, value in exif.items():
                tags[tag] = value
            kwargs.pop("exif")
        if raster.xmp:
            tags[_XMP_TIFF_TAG] = raster.xmp
            tags.tagtype[_XMP_TIFF_TAG] = 1  # BYTE
        kwargs["tiffinfo"] = tags
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise UnsupportedError(f"cannot write a {raster.mode} image as {fmt}: {exc}") from exc
    return buf.getvalue()


def write_image(raster: Raster, path: str | Path) -> None:
    Path(path).write_bytes(write_image_bytes(raster, image_format(path)))
