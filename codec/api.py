"""``encode`` / ``decode`` / ``info``: arrays in, bytes out, and back, bit for bit.

Which coder runs is decided by the image (and named in the file's HEAD section):

======================  ============================================================
8-bit RGB               learned: exact MGCF + range coding (``codec.learned``)
8-bit RGBA              learned RGB, alpha plane as JPEG-XL lossless (ALPH section)
other 8/16-bit images   JPEG-XL lossless (gray, gray+alpha, palette indices, bilevel,
                        16-bit gray and colour, CMYK, ...)
32-bit int / float      zlib
======================  ============================================================

HEAD payload (little-endian)::

    u8 coder (1 mgcf, 2 jxl, 3 zlib, 4 cca: lossy) | u32 height | u32 width | u8 channels | u8 dtype code
    u8 len + mode (ASCII) | 32 B hash of the image (format v2: ``codec.raster.raster_hash``,
    pixels and how they are shown; v1 files: ``codec.raster.pixel_hash``, the pixels alone)
    32 B SHA-256 of the model file (zeros unless mgcf or cca) | u16 patch | u16 patches per stream

For cca (``codec.lossy.api``), the pixel hash is that of the lossy reconstruction, and DATA holds
the range-coded latents.

Other sections: ADPT (the image's adapters, ``codec.adapters``; only when they pay for their own
bits, and before DATA: the decoder merges them into the model first), DATA (the coded pixels; for
mgcf ``u32 n | n x u32 lengths | streams``), ALPH,
PLTE (``u8 len + palette mode | entries``), and the ancillary ``iccp``, ``exif``, ``xmp ``,
``trns`` and ``pngc`` (a PNG's other metadata chunks, ``codec.images``) carried through to the
restored file. Decoding checks sizes before allocating, that the
mode fits the pixels (``codec.raster.MODES``), the palette and the transparency, and the hash after
decoding: it returns the original image or raises.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from codec import adapters, fallback, learned, rpft
from codec.adapters import AdapterSet, merge
from codec.container import HEAD, Container, parse
from codec.errors import CorruptFileError, UnsupportedError, VerificationError
from codec.exact import ExactMGCF
from codec.images import decode_transparency, from_pil, split_chunks
from codec.mgcf import MGCF
from codec.raster import MODES, Raster, hash_of_version, layout_problem, palette_problem, raster_hash
from codec.rpft import AdaptConfig, Adapted
from codec.weights import ModelFile, default_model_path, exact_model_by_hash, load_model_file

CODER_MGCF, CODER_JXL, CODER_ZLIB, CODER_CCA = 1, 2, 3, 4
CODER_NAMES = {CODER_MGCF: "mgcf", CODER_JXL: "jxl-lossless", CODER_ZLIB: "zlib", CODER_CCA: "cca"}
DTYPES = {1: "bool", 2: "uint8", 3: "uint16", 4: "int32", 5: "float32"}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
KNOWN_CRITICAL = frozenset({HEAD, b"DATA", b"ALPH", b"PLTE", adapters.SECTION})
SECTION_OVERHEAD = 12  # bytes a section adds besides its payload: tag, length, CRC
MAX_CHANNELS = 16
# The modes a coder can write (the learned and lossy coders only code RGB).
CODER_MODES = {CODER_MGCF: ("RGB", "RGBA"), CODER_CCA: ("RGB",), CODER_JXL: tuple(MODES), CODER_ZLIB: tuple(MODES)}
# Largest image a decoder accepts, in bytes of pixels (1 GiB, e.g. 350 megapixels of RGB); a file
# claiming more is refused before anything is allocated. Raise it with CALLIC_MAX_PIXEL_BYTES.
MAX_PIXEL_BYTES = int(os.environ.get("CALLIC_MAX_PIXEL_BYTES", 1 << 30))
MAX_PATCHES_PER_STREAM = 4096
DEFAULT_PATCHES_PER_STREAM = 64

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
        if coder not in CODER_NAMES:
            raise UnsupportedError(f"unknown coder id {coder}")
        if dt not in DTYPES:
            raise CorruptFileError(f"unknown sample type {dt}")
        if h < 1 or w < 1 or not 1 <= c <= MAX_CHANNELS:
            raise CorruptFileError(f"impossible image size {h}x{w}x{c}")
        if h * w * c * np.dtype(DTYPES[dt]).itemsize > MAX_PIXEL_BYTES:
            raise UnsupportedError(
                f"image of {h}x{w}x{c} exceeds the decode limit of {MAX_PIXEL_BYTES} bytes "
                "(set CALLIC_MAX_PIXEL_BYTES to raise it)"
            )
        problem = layout_problem(mode, DTYPES[dt], c)
        if problem is not None:
            raise CorruptFileError(f"HEAD: {problem}")
        if mode not in CODER_MODES[coder]:
            raise CorruptFileError(f"HEAD: coder {CODER_NAMES[coder]} does not code {mode} images")
        return cls(coder, h, w, c, DTYPES[dt], mode, ph, mh, patch, per)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.height, self.width) if self.channels == 1 else (self.height, self.width, self.channels)


# ---------------------------------------------------------------- encoding


def _as_raster(image: Any) -> Raster:
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


def _mgcf_payload(streams: list[bytes]) -> bytes:
    return struct.pack(f"<I{len(streams)}I", len(streams), *map(len, streams)) + b"".join(streams)


@dataclass
class Model:
    """A loaded model file: the exact model that codes, its hash, and (loaded on first use) the
    float model that per-image adaptation fine-tunes."""

    exact: ExactMGCF
    digest: bytes
    file: ModelFile | None = None
    _float: dict[str, MGCF] = field(default_factory=dict, init=False, repr=False)

    def float_model(self, device: str | torch.device) -> MGCF:
        key = str(device)
        if key not in self._float:
            if self.file is None:
                raise ValueError("this model was loaded without its float weights; adaptation needs them")
            self._float[key] = self.file.float_model().to(device)
        return self._float[key]


def load_model(model: str | None = None, device: str = "cpu") -> Model:
    """The model in a file (default: the shipped model), ready to code on ``device``."""
    mf = load_model_file(model or default_model_path())
    return Model(mf.exact_model(device), mf.digest, mf)


def with_adapters(net: ExactMGCF, adapters: AdapterSet) -> ExactMGCF:
    """The exact model with an image's adapters merged into its integer weights."""
    return ExactMGCF(net.cfg, merge(net.cfg, net.t, adapters), net.luts, net.device)


@dataclass
class EncodeReport:
    """What encoding one image did and how long each stage took (seconds; adaptation stages are
    those of the whole batch the image was adapted in). Bits marked ``estimated`` come from the
    float model's likelihoods, not from coded sizes."""

    bytes: int = 0
    coder: str = ""
    steps: int = 0
    # "none" (T = 0 or not the learned coder), "kept" or "dropped". Adapters are kept when they
    # are estimated to pay for their bits *and* the file with them is really smaller (the image
    # is then coded twice, and the exact pass and coding times include both).
    adapters: str = "none"
    adapter_bytes: int = 0
    estimated_base_bits: float | None = None
    estimated_adapted_bits: float | None = None  # image bits with adapters, adapter bits excluded
    timings: dict[str, float] = field(default_factory=dict)


def encode(
    image: Any,
    *,
    model: Model | None = None,
    device: str = "cpu",
    patches_per_stream: int = DEFAULT_PATCHES_PER_STREAM,
    verify: bool = False,
    adapt: AdaptConfig | None = None,
    learned: bool = True,
) -> bytes:
    """Compress ``image`` (numpy array, ``Raster`` or Pillow image) to ``.cllc`` bytes.

    ``model``: from ``load_model``; the shipped default when None. ``adapt``: per-image
    fine-tuning (``AdaptConfig(steps=T)``); None or T = 0 codes with the pre-trained model.
    ``verify``: decode the result (on the CPU) and compare before returning. ``learned=False``
    codes 8-bit RGB(A) with the classical coder (JPEG-XL lossless) too, e.g. to keep the smaller.
    """
    kwargs = {"model": model, "device": device, "patches_per_stream": patches_per_stream, "verify": verify}
    return encode_many([image], adapt=adapt, learned=learned, **kwargs)[0][0]


def encode_many(
    images: list[Any],
    *,
    model: Model | None = None,
    device: str = "cpu",
    patches_per_stream: int = DEFAULT_PATCHES_PER_STREAM,
    verify: bool = False,
    adapt: AdaptConfig | None = None,
    learned: bool = True,
) -> list[tuple[bytes, EncodeReport]]:
    """``encode`` for several images: their adapters are fine-tuned together, in one batch (one
    forward pass per step for all of them), and each file is the same as encoding it alone would
    give, up to the float rounding of fine-tuning. Returns (file bytes, report) per image."""
    if not 1 <= patches_per_stream <= MAX_PATCHES_PER_STREAM:
        raise ValueError(f"patches_per_stream must be in 1..{MAX_PATCHES_PER_STREAM}")
    rasters = [_as_raster(image) for image in images]
    for raster in rasters:
        check_encodable(raster)
    learned_idx = [i for i, r in enumerate(rasters) if learned and _learned_path(r)]
    if learned_idx and model is None:
        model = load_model(device=device)
    adapted: dict[int, Adapted] = {}
    if learned_idx and adapt is not None and adapt.steps > 0:
        rgb = [np.ascontiguousarray(rasters[i].pixels[..., :3]) for i in learned_idx]
        adapted = dict(zip(learned_idx, rpft.adapt(model.float_model(device), rgb, adapt), strict=True))
    out = []
    for i, raster in enumerate(rasters):
        report = EncodeReport(steps=adapt.steps if adapt is not None and i in adapted else 0)
        data = _encode_one(raster, model if i in learned_idx else None, adapted.get(i), patches_per_stream, report)
        if verify:
            start = time.perf_counter()
            decode(data, model=Model(model.exact.to("cpu"), model.digest) if model is not None else None)
            report.timings["verify_s"] = time.perf_counter() - start
        report.bytes = len(data)
        out.append((data, report))
    return out


def _adapter_choice(model: Model, adapted: Adapted, report: EncodeReport) -> tuple[ExactMGCF, bytes] | None:
    """The merged model and ADPT section, if the adapters are estimated to pay for their bits."""
    net = model.exact
    report.timings.update(adapted.timings)
    report.estimated_base_bits = adapted.base_bits
    report.estimated_adapted_bits = adapted.adapted_bits
    section = adapters.encode_section(net.cfg, adapted.adapters, net.luts["sigmoid"])
    report.adapter_bytes = len(section)
    report.adapters = "dropped"
    if adapted.adapted_bits + 8 * (len(section) + SECTION_OVERHEAD) >= adapted.base_bits:
        return None
    try:
        return with_adapters(net, adapted.adapters), section
    except ValueError:  # a merged layer could overflow the exact accumulator: code without
        return None


def _learned_path(raster: Raster) -> bool:
    return raster.pixels.dtype == np.uint8 and raster.mode in ("RGB", "RGBA")


def _encode_one(raster: Raster, model: Model | None, adapted: Adapted | None, per: int, report: EncodeReport) -> bytes:
    """One image's file: the learned coder when a model is given (8-bit RGB(A) only), else classical."""
    pixels = raster.pixels
    learned_path = model is not None and _learned_path(raster)
    container = Container()
    model_hash, patch, section = bytes(32), 0, None
    if learned_path:
        model_hash, patch = model.digest, model.exact.cfg.patch
        rgb = np.ascontiguousarray(pixels[..., :3])
        with torch.inference_mode():
            data = _mgcf_payload(learned.encode_rgb(rgb, model.exact, per, timings=report.timings))
            choice = _adapter_choice(model, adapted, report) if adapted is not None else None
            if choice is not None:
                # Estimates can be wrong by more than the margin: the real sizes decide.
                adapted_data = _mgcf_payload(learned.encode_rgb(rgb, choice[0], per, timings=report.timings))
                if len(adapted_data) + len(choice[1]) + SECTION_OVERHEAD < len(data):
                    data, section, report.adapters = adapted_data, choice[1], "kept"
        coder = CODER_MGCF
    else:
        start = time.perf_counter()
        if fallback.jxl_supports(pixels):
            coder, data = CODER_JXL, fallback.jxl_encode(pixels)
        else:
            coder, data = CODER_ZLIB, fallback.zlib_encode(pixels)
        report.timings["coding_s"] = time.perf_counter() - start
        per = 0
    report.coder = CODER_NAMES[coder]
    header = Header(
        coder,
        raster.height,
        raster.width,
        raster.channels,
        pixels.dtype.name,
        raster.mode,
        raster_hash(raster),
        model_hash,
        patch,
        per,
    )
    container.add(HEAD, header.to_bytes())
    if learned_path and raster.channels == 4:
        container.add(b"ALPH", fallback.jxl_encode(np.ascontiguousarray(pixels[..., 3])))
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
        container.add(adapters.SECTION, section)  # before the image: the decoder merges first
    container.add(b"DATA", data)
    return container.to_bytes()


# ---------------------------------------------------------------- decoding


def _split_streams(data: bytes, expected: int) -> list[bytes]:
    if len(data) < 4:
        raise CorruptFileError("DATA section too short")
    (n,) = struct.unpack_from("<I", data, 0)
    if n != expected:
        raise CorruptFileError(f"DATA holds {n} streams, the image needs {expected}")
    if len(data) < 4 + 4 * n:
        raise CorruptFileError("DATA section too short for its stream table")
    lengths = struct.unpack_from(f"<{n}I", data, 4)
    pos = 4 + 4 * n
    if pos + sum(lengths) != len(data):
        raise CorruptFileError("stream lengths do not add up to the DATA section")
    out = []
    for length in lengths:
        out.append(data[pos : pos + length])
        pos += length
    return out


def read_header(data: bytes) -> tuple[Header, Container]:
    container = parse(data, KNOWN_CRITICAL)
    return Header.from_bytes(container.require(HEAD)), container


def decode(data: bytes, *, model: Model | None = None, device: str = "cpu", lossy_model=None) -> Raster:
    """``.cllc`` bytes -> the original ``Raster`` (for a lossy file: the reconstruction it was
    made with), or a ``CallicError`` saying why not."""
    header, container = read_header(data)
    shown = _shown_facts(container, header.mode)  # checked before the (costly) pixels are decoded
    payload = container.require(b"DATA")
    dtype = np.dtype(header.dtype)
    if header.coder == CODER_CCA:
        from codec.lossy.api import decode_latents

        pixels = decode_latents(header, payload, lossy_model, device)
    elif header.coder == CODER_MGCF:
        if header.dtype != "uint8" or header.channels not in (3, 4):
            raise CorruptFileError("mgcf coder with a non 8-bit RGB(A) header")
        if model is not None and model.digest == header.model_hash:
            net = model.exact
        else:
            net = exact_model_by_hash(header.model_hash, device)
        section = container.get(adapters.SECTION)
        if section is not None:
            try:
                net = with_adapters(net, adapters.decode_section(net.cfg, section, net.luts["sigmoid"]))
            except ValueError as exc:
                raise CorruptFileError(f"adapters in the file do not fit the model: {exc}") from exc
        if header.patch != net.cfg.patch or not 1 <= header.patches_per_stream <= MAX_PATCHES_PER_STREAM:
            raise CorruptFileError(f"patch layout {header.patch}/{header.patches_per_stream} does not fit the model")
        n = learned.stream_count(header.height, header.width, header.patch, header.patches_per_stream)
        streams = _split_streams(payload, n)
        with torch.inference_mode():
            rgb = learned.decode_rgb(streams, header.height, header.width, net, header.patches_per_stream)
        if header.channels == 4:
            alpha = fallback.jxl_decode(container.require(b"ALPH"), (header.height, header.width), dtype)
            pixels = np.concatenate([rgb, alpha[..., None]], axis=2)
        else:
            pixels = rgb
    elif header.coder == CODER_JXL:
        pixels = fallback.jxl_decode(payload, header.shape, dtype)
    else:
        pixels = fallback.zlib_decode(payload, header.shape, dtype)
    raster = Raster(pixels, header.mode, **shown)
    if hash_of_version(raster, container.version) != header.pixel_hash:
        raise VerificationError(
            "decoded image does not match the hash stored in the file"
            + (" (pixels, mode, palette, transparency and metadata)" if container.version >= 2 else "")
        )
    return raster


def _shown_facts(container: Container, mode: str) -> dict[str, Any]:
    """The palette, transparency and metadata a file holds, as ``Raster`` fields; ``CorruptFileError``
    for a palette or transparency no writer could use (a crafted file must not reach one)."""
    facts: dict[str, Any] = {}
    plte = container.get(b"PLTE")
    if plte is not None:
        n = plte[0] if plte else 0
        try:
            palette_mode = plte[1 : 1 + n].decode("ascii") if len(plte) > n else ""
        except UnicodeDecodeError:
            palette_mode = ""
        problem = palette_problem(mode, palette_mode, plte[1 + n :]) if palette_mode else "malformed section"
        if problem is not None:
            raise CorruptFileError(f"PLTE: {problem}")
        facts["palette_mode"], facts["palette"] = palette_mode, plte[1 + n :]
    facts["transparency"] = container.get(b"trns")
    decode_transparency(facts["transparency"])
    facts["icc_profile"] = container.get(b"iccp")
    facts["exif"] = container.get(b"exif")
    facts["xmp"] = container.get(b"xmp ")
    facts["png_chunks"] = container.get(b"pngc")
    split_chunks(facts["png_chunks"])  # CorruptFileError before decoding, not when writing
    return facts


def info(data: bytes) -> dict[str, Any]:
    """What a file holds, without decoding the pixels."""
    header, container = read_header(data)
    samples = header.height * header.width * header.channels
    return {
        "coder": CODER_NAMES[header.coder],
        "width": header.width,
        "height": header.height,
        "channels": header.channels,
        "mode": header.mode,
        "dtype": header.dtype,
        "format_version": container.version,
        "bytes": len(data),
        "bits_per_subpixel": 8 * len(data) / samples,
        "pixel_sha256": header.pixel_hash.hex(),
        "model_sha256": header.model_hash.hex() if header.coder in (CODER_MGCF, CODER_CCA) else None,
        "lossy": header.coder == CODER_CCA,
        "patch": header.patch or None,
        "patches_per_stream": header.patches_per_stream or None,
        "adapted": container.get(adapters.SECTION) is not None,
        "sections": {t.decode(): len(p) for t, p in container.sections},
    }
