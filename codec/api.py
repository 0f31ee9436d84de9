"""``encode`` / ``decode`` / ``info``: arrays in, bytes out, and back, bit for bit (``decode``
is ``codec.reading``'s, ``info`` ``codec.header``'s; the learned coder's decoder is here).

Which coder runs is decided by the image (and named in the file's HEAD section):

======================  ============================================================
8-bit RGB               learned: exact MGCF + range coding (``codec.learned``)
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

For cca (``codec.lossy.api``), the pixel hash is that of the lossy reconstruction, and DATA holds
the range-coded latents.

Other sections: ADPT (the image's adapters, ``codec.adapters``; only when they pay for their own
bits, and before DATA: the decoder merges them into the model first), DATA (the coded pixels; for
mgcf ``u32 n | n x u32 lengths | streams``), ALPH,
PLTE (``u8 len + palette mode | entries``), and the ancillary ``iccp``, ``exif``, ``xmp ``,
``trns`` and ``pngc`` (a PNG's other metadata chunks, ``codec.images``) carried through to the
restored file. Decoding (``codec.reading``) checks sizes before allocating, that the
mode fits the pixels (``codec.raster.MODES``), the palette and the transparency, and the hash after
decoding: it returns the original image or raises.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from codec import adapters, fallback, learned, rpft
from codec.adapters import AdapterSet, merge
from codec.container import HEAD, Container  # noqa: F401 (HEAD re-exported)
from codec.defaults import (
    CALIBRATION_SCHEMES,
    DEFAULT_ADAPT_PATCHES,
    DEFAULT_CALIBRATION,
    DEFAULT_JXL_EFFORT,
    DEFAULT_PATCHES_PER_STREAM,  # noqa: F401 (re-exported; for 64x64 patches, see patches_per_stream)
    DEFAULT_STEPS,
    MAX_PATCHES_PER_STREAM,
    MIN_ADAPT_PIXELS,  # noqa: F401 (re-exported)
)
from codec.defaults import patches_per_stream as default_patches_per_stream
from codec.errors import CorruptFileError
from codec.exact import ExactMGCF
from codec.fileformat import as_raster, check_encodable, file_header, write_file  # noqa: F401 (re-exported)
from codec.header import (  # the HEAD section and info live in the torch-free codec.header
    CODER_CCA,  # noqa: F401 (re-exported)
    CODER_JXL,
    CODER_MGCF,
    CODER_ZLIB,
    DTYPE_CODES,  # noqa: F401 (re-exported)
    DTYPES,  # noqa: F401 (re-exported)
    KNOWN_CRITICAL,  # noqa: F401 (re-exported)
    Header,
    calibration_scheme,
    info,  # noqa: F401 (re-exported)
    read_header,  # noqa: F401 (re-exported)
)
from codec.mgcf import MGCF
from codec.modelfiles import default_model_path
from codec.raster import Raster
from codec.reading import decode  # noqa: F401 (re-exported: codec.api.decode)
from codec.registry import coder as registered_coder
from codec.report import EncodeReport
from codec.rpft import AdaptConfig, Adapted
from codec.weights import ModelFile, exact_model_by_hash, load_model_file

SECTION_OVERHEAD = 12  # bytes a section adds besides its payload: tag, length, CRC
CODERS = ("auto", "learned", "classical")  # encode's ``coder``
# The default fine-tuning, the same as ``callic encode``'s.
DEFAULT_ADAPT = AdaptConfig(steps=DEFAULT_STEPS, max_patches=DEFAULT_ADAPT_PATCHES)
# Most of its learned file that adaptation is taken to save: "auto" does not adapt an image whose
# pre-trained learned file is larger than the classical one by more. Measured on pkg13
# (docs/bench-adapt-pkg13.md): adapters saved at most 5.0% at T = 10 and 9.6% at T = 50.
ADAPT_REACH = 0.10


# ---------------------------------------------------------------- encoding


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
    _cpu: dict[str, Model] = field(default_factory=dict, init=False, repr=False)

    def float_model(self, device: str | torch.device) -> MGCF:
        key = str(device)
        if key not in self._float:
            if self.file is None:
                raise ValueError("this model was loaded without its float weights; adaptation needs them")
            self._float[key] = self.file.float_model().to(device)
        return self._float[key]

    def on_cpu(self) -> Model:
        """This model's exact path on the CPU, where every file is verified: copied from the
        GPU once, not per image (itself when it is on the CPU already)."""
        if str(self.exact.device) == "cpu":
            return self
        if "cpu" not in self._cpu:
            self._cpu["cpu"] = Model(self.exact.to("cpu"), self.digest)
        return self._cpu["cpu"]


def load_model(model: str | None = None, device: str = "cpu") -> Model:
    """The model in a file (default: the shipped model), ready to code on ``device``."""
    mf = load_model_file(model or default_model_path())
    return Model(mf.exact_model(device), mf.digest, mf)


def with_adapters(net: ExactMGCF, adapters: AdapterSet) -> ExactMGCF:
    """The exact model with an image's adapters merged into its integer weights."""
    return ExactMGCF(net.cfg, merge(net.cfg, net.t, adapters), net.luts, net.device)


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
    learned coder's backward-adaptive calibration scheme (``codec.calibration``; 0: none).
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
    learned_files = {i: _LearnedFile.code(rasters[i], model, per, effort, reports[i], calibration) for i in learned_idx}
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
    raster: Raster, learned_file: _LearnedFile, classical: tuple[int, bytes] | None, cfg: AdaptConfig
) -> bool:
    """Whether fine-tuning could change the outcome: not for an image under ``cfg.min_pixels``
    (default ``MIN_ADAPT_PIXELS``: its adapters cost more bits than they save), nor where the
    classical file is smaller than the learned one could become if adapters saved ``ADAPT_REACH``."""
    if raster.height * raster.width < cfg.min_pixels:
        return False
    return classical is None or len(learned_file.data) * (1 - ADAPT_REACH) < len(classical[1])


def _keep_smaller(
    learned_file: _LearnedFile | None, classical: tuple[int, bytes] | None, report: EncodeReport
) -> bytes:
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


@dataclass
class _LearnedFile:
    """One image's learned-coder file, first with the pre-trained model, then (``try_adapters``)
    with its adapters if they make it smaller."""

    raster: Raster
    rgb: np.ndarray
    header: Header
    alpha: bytes | None  # ALPH payload of an RGBA image
    per: int
    calibration: int
    data: bytes = b""

    @classmethod
    def code(
        cls, raster: Raster, model: Model, per: int, effort: int, report: EncodeReport, calibration: int
    ) -> _LearnedFile:
        pixels = raster.pixels
        alpha = fallback.jxl_encode(np.ascontiguousarray(pixels[..., 3]), effort) if raster.channels == 4 else None
        header = file_header(raster, CODER_MGCF, model.digest, model.exact.cfg.patch, per)
        out = cls(raster, np.ascontiguousarray(pixels[..., :3]), header, alpha, per, calibration)
        out.data = out._file(model.exact, None, report)
        return out

    def try_adapters(self, model: Model, adapted: Adapted, report: EncodeReport) -> None:
        """Keep the image's adapters if they are estimated to pay and the file is really smaller
        (estimates can be wrong by more than the margin: the real sizes decide)."""
        choice = _adapter_choice(model, adapted, report)
        if choice is None:
            return
        data = self._file(choice[0], choice[1], report)
        if len(data) < len(self.data):
            self.data, report.adapters = data, "kept"

    def _file(self, net: ExactMGCF, section: bytes | None, report: EncodeReport) -> bytes:
        with torch.inference_mode():
            streams = learned.encode_rgb(self.rgb, net, self.per, timings=report.timings, calibration=self.calibration)
        return write_file(
            self.raster,
            self.header,
            _mgcf_payload(streams),
            alpha=self.alpha,
            section=section,
            calibration=self.calibration,
        )


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


def decode_mgcf(header: Header, container: Container, payload: bytes, models: list[Any], device: str) -> np.ndarray:
    """The learned coder's pixels (``codec.registry.PixelDecoder``): RGB from the streams, with the
    file's adapters merged into the model first, and an RGBA file's alpha plane from ALPH."""
    if header.dtype != "uint8" or header.channels not in (3, 4):
        raise CorruptFileError("mgcf coder with a non 8-bit RGB(A) header")
    loaded = next((m for m in models if isinstance(m, Model) and m.digest == header.model_hash), None)
    net = loaded.exact if loaded is not None else exact_model_by_hash(header.model_hash, device)
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
        rgb = learned.decode_rgb(
            streams,
            header.height,
            header.width,
            net,
            header.patches_per_stream,
            calibration=calibration_scheme(container),
        )
    if header.channels == 3:
        return rgb
    alpha = fallback.jxl_decode(container.require(b"ALPH"), (header.height, header.width), np.dtype(np.uint8))
    return np.concatenate([rgb, alpha[..., None]], axis=2)
