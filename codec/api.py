"""``encode`` / ``decode`` / ``info``: arrays in, bytes out, and back, bit for bit (``decode``
is ``codec.reading``'s, ``info`` ``codec.header``'s, the learned file and its decoder
``codec.mgcf.coder``'s; the lossless policy, learned or classical, is here).

Which coder runs is decided by the image (and named in the file's HEAD section):

======================  ============================================================
8-bit RGB               learned: exact MGCF + range coding (``codec.mgcf.learned``)
8-bit RGBA              learned RGB, alpha plane as JPEG-XL lossless (ALPH section)
other 8/16-bit images   JPEG-XL lossless (gray, gray+alpha, palette indices, bilevel,
                        16-bit gray and colour, CMYK, ...)
32-bit int / float      zlib
======================  ============================================================

By default (``coder="auto"``) an 8-bit RGB(A) image is also coded with JPEG-XL lossless, and the
smaller of the two files is kept: never larger than JPEG-XL's (``encode``).

HEAD payload (little-endian)::

    u8 coder (1 mgcf, 2 jxl, 3 zlib, 4 cca: lossy) | u32 height | u32 width | u8 channels | u8 dtype code
    u8 len + mode (ASCII) | 32 B hash of the image (format v2: ``codec.raster.raster_hash``,
    pixels and how they are shown; v1 files: ``codec.raster.pixel_hash``, the pixels alone)
    32 B SHA-256 of the model file (zeros unless mgcf or cca) | u16 patch | u16 patches per stream

For cca (``codec.cca.api``), the pixel hash is that of the lossy reconstruction, and DATA holds
the range-coded latents.

Other sections: ADPT (the image's adapters, ``codec.mgcf.adapters``; only when they pay for their own
bits, and before DATA: the decoder merges them into the model first), DATA (the coded pixels; for
mgcf ``u32 n | n x u32 lengths | streams``), ALPH,
PLTE (``u8 len + palette mode | entries``), and the ancillary ``iccp``, ``exif``, ``xmp ``,
``trns`` and ``pngc`` (a PNG's other metadata chunks, ``codec.images``) carried through to the
restored file. Decoding (``codec.reading``) checks sizes before allocating, that the
mode fits the pixels (``codec.raster.MODES``), the palette and the transparency, and the hash after
decoding: it returns the original image or raises.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from codec import fallback
from codec.defaults import (
    CALIBRATION_SCHEMES,
    DEFAULT_ADAPT_PATCHES,
    DEFAULT_CALIBRATION,
    DEFAULT_JXL_EFFORT,
    DEFAULT_STEPS,
    MAX_PATCHES_PER_STREAM,
)
from codec.defaults import patches_per_stream as default_patches_per_stream
from codec.fileformat import as_raster, check_encodable, file_header, write_file
from codec.header import CODER_JXL, CODER_MGCF, CODER_ZLIB, KNOWN_CRITICAL, Header, info, read_header
from codec.mgcf import rpft
from codec.mgcf.coder import LearnedFile, Model, load_model
from codec.mgcf.rpft import AdaptConfig
from codec.raster import Raster
from codec.reading import decode
from codec.registry import coder as registered_coder
from codec.report import EncodeReport

# ``codec.api``'s names since the first release, kept for callers: ``Header``, ``KNOWN_CRITICAL``,
# ``info`` and ``read_header`` live in the torch-free ``codec.header``.
__all__ = [
    "KNOWN_CRITICAL",
    "Header",
    "info",
    "read_header",
    "ADAPT_REACH",
    "CODERS",
    "DEFAULT_ADAPT",
    "Model",
    "decode",
    "encode",
    "encode_many",
    "learned_path",
    "load_model",
]

CODERS = ("auto", "learned", "classical")  # encode's ``coder``
# The default fine-tuning, the same as ``callic encode``'s.
DEFAULT_ADAPT = AdaptConfig(steps=DEFAULT_STEPS, max_patches=DEFAULT_ADAPT_PATCHES)
# Most of its learned file that adaptation is taken to save: "auto" does not adapt an image whose
# pre-trained learned file is larger than the classical one by more. Measured on pkg13
# (docs/bench-adapt-pkg13.md): adapters saved at most 5.0% at T = 10 and 9.6% at T = 50.
ADAPT_REACH = 0.10


def encode(
    image: Any,
    *,
    model: Model | None = None,
    device: str = "cpu",
    patches_per_stream: int | None = None,
    verify: bool = False,
    adapt: AdaptConfig | None = DEFAULT_ADAPT,
    coder: str = "auto",
    jxl_effort: int = DEFAULT_JXL_EFFORT,
    calibration: int = DEFAULT_CALIBRATION,
) -> bytes:
    """Compress ``image`` (numpy array, ``Raster`` or Pillow image) to ``.cllc`` bytes.

    ``coder``: ``"auto"`` (default) codes an 8-bit RGB(A) image with the learned coder *and* with
    JPEG-XL lossless at ``jxl_effort`` (1..10, as ``cjxl -e``) and keeps the smaller file (on a
    tie JPEG-XL, which decodes faster): never larger than JPEG-XL's. ``"learned"`` forces the
    learned coder where it applies (8-bit RGB(A)), ``"classical"`` uses JPEG-XL / zlib only.
    Other images always get the classical coders.

    ``model``: from ``load_model``; the shipped default when None. ``adapt``: per-image
    fine-tuning, by default ``DEFAULT_ADAPT`` (``codec.defaults.DEFAULT_STEPS`` steps on at most
    ``DEFAULT_ADAPT_PATCHES`` patches per step, as ``callic encode``); None or steps 0 codes with
    the pre-trained model (and so does, by default, a ``Model`` without its float weights; asked
    for explicitly, adaptation then raises). Images under ``MIN_ADAPT_PIXELS`` pixels (the config's
    ``min_pixels``) are never adapted, and with ``"auto"`` neither are those whose learned file is
    too far behind JPEG-XL's for adapters to close the gap (``ADAPT_REACH``). ``verify``: decode
    the kept file (on the CPU) and compare before returning. ``patches_per_stream``: by default
    ``codec.defaults.patches_per_stream`` of the model's patch size (64 for 64x64 patches, 16 for
    128x128: the same pixels, and so the same decoder memory, per stream). ``calibration``: the
    learned coder's backward-adaptive calibration scheme (``codec.mgcf.calibration``; 0: none).
    """
    kwargs = {
        "model": model,
        "device": device,
        "patches_per_stream": patches_per_stream,
        "verify": verify,
        "calibration": calibration,
    }
    return encode_many([image], adapt=adapt, coder=coder, jxl_effort=jxl_effort, **kwargs)[0][0]


def encode_many(
    images: list[Any],
    *,
    model: Model | None = None,
    device: str = "cpu",
    patches_per_stream: int | None = None,
    verify: bool = False,
    adapt: AdaptConfig | None = DEFAULT_ADAPT,
    coder: str = "auto",
    jxl_effort: int = DEFAULT_JXL_EFFORT,
    calibration: int = DEFAULT_CALIBRATION,
) -> list[tuple[bytes, EncodeReport]]:
    """``encode`` for several images: their adapters are fine-tuned together, in one batch (one
    forward pass per step for all of them), and each file is the same as encoding it alone would
    give, up to the float rounding of fine-tuning. Returns (file bytes, report) per image.

    Order of work: the cheap classical candidates and the pre-trained learned files first, so
    that only the images where adapters could still matter are fine-tuned."""
    if coder not in CODERS:
        raise ValueError(f"coder must be one of {', '.join(CODERS)}, not {coder!r}")
    effort = fallback.check_jxl_effort(jxl_effort)
    if patches_per_stream is not None and not 1 <= patches_per_stream <= MAX_PATCHES_PER_STREAM:
        raise ValueError(f"patches_per_stream must be in 1..{MAX_PATCHES_PER_STREAM}")
    if calibration not in CALIBRATION_SCHEMES:
        raise ValueError(f"calibration must be one of {CALIBRATION_SCHEMES}, not {calibration!r}")
    rasters = [as_raster(image) for image in images]
    for raster in rasters:
        check_encodable(raster)
    reports = [EncodeReport() for _ in rasters]
    learned_idx = [i for i, r in enumerate(rasters) if coder != "classical" and learned_path(r)]
    if learned_idx and model is None:
        model = load_model(device=device)
    classical = {
        i: _classical_file(r, effort, reports[i], "classical_s" if i in learned_idx else "coding_s")
        for i, r in enumerate(rasters)
        if coder == "auto" or i not in learned_idx
    }
    per = patches_per_stream or (default_patches_per_stream(model.exact.cfg.patch) if model is not None else 0)
    learned_files = {i: LearnedFile.code(rasters[i], model, per, effort, reports[i], calibration) for i in learned_idx}
    steps = adapt.steps if adapt is not None else 0
    worth = [i for i in learned_idx if steps and _worth_adapting(rasters[i], learned_files[i], classical.get(i), adapt)]
    if worth and model.file is None and adapt is DEFAULT_ADAPT:
        worth = []  # a model without its float weights cannot adapt: by default it just codes
    if worth:
        rgb = [learned_files[i].rgb for i in worth]
        for i, adapted in zip(worth, rpft.adapt(model.float_model(device), rgb, adapt), strict=True):
            reports[i].steps = adapted.steps
            learned_files[i].try_adapters(model, adapted, reports[i])
    out = []
    for i, report in enumerate(reports):
        data = _keep_smaller(learned_files.get(i), classical.get(i), report)
        if verify:
            start = time.perf_counter()
            decode(data, model=model.on_cpu() if model is not None else None)
            report.timings["verify_s"] = time.perf_counter() - start
        report.bytes = len(data)
        out.append((data, report))
    return out


def _worth_adapting(
    raster: Raster, learned_file: LearnedFile, classical: tuple[int, bytes] | None, cfg: AdaptConfig
) -> bool:
    """Whether fine-tuning could change the outcome: not for an image under ``cfg.min_pixels``
    (default ``MIN_ADAPT_PIXELS``: its adapters cost more bits than they save), nor where the
    classical file is smaller than the learned one could become if adapters saved ``ADAPT_REACH``."""
    if raster.height * raster.width < cfg.min_pixels:
        return False
    return classical is None or len(learned_file.data) * (1 - ADAPT_REACH) < len(classical[1])


def _keep_smaller(learned_file: LearnedFile | None, classical: tuple[int, bytes] | None, report: EncodeReport) -> bytes:
    """The kept file of the candidates coded, with the report saying which and both sizes; a tie
    goes to the classical file (it decodes much faster)."""
    if learned_file is not None:
        report.learned_bytes = len(learned_file.data)
    if classical is not None:
        report.classical_bytes = len(classical[1])
    if learned_file is not None and (classical is None or len(learned_file.data) < len(classical[1])):
        report.coder = registered_coder(CODER_MGCF).name
        report.model_hash = learned_file.header.model_hash.hex()
        return learned_file.data
    assert classical is not None
    report.coder = registered_coder(classical[0]).name
    if report.adapters == "kept":
        report.adapters = "dropped"
    return classical[1]


def learned_path(raster: Raster) -> bool:
    """Whether the learned coder codes this image (8-bit RGB or RGBA); the rest is classical."""
    return raster.pixels.dtype == np.uint8 and raster.mode in ("RGB", "RGBA")


def _classical_file(raster: Raster, effort: int, report: EncodeReport, clock: str) -> tuple[int, bytes]:
    """(coder id, file) with the classical coders: JPEG-XL lossless where it holds the pixels, else
    zlib. Its seconds go to ``report.timings[clock]`` (``classical_s`` when it is the learned
    file's rival, so that the learned coder's ``coding_s`` stays its own)."""
    start = time.perf_counter()
    pixels = raster.pixels
    if fallback.jxl_supports(pixels):
        coder, data = CODER_JXL, fallback.jxl_encode(pixels, effort)
    else:
        coder, data = CODER_ZLIB, fallback.zlib_encode(pixels)
    report.timings[clock] = time.perf_counter() - start
    header = file_header(raster, coder, bytes(32), 0, 0)
    return coder, write_file(raster, header, data, alpha=None, section=None)
