"""The codec side of archive jobs: source file bytes -> what to store, and back.

What is stored for a source file:

- ``passthrough`` (its bytes, unchanged): files already lossy-coded (JPEG), formats we cannot
  write back (GIF, WebP, ...), animations and multi-page files, and any image whose pixels would
  not survive being written back in its own format. Restoring gives the very same bytes.
- ``jpeg-jxl`` with ``jpeg: jxl``: a JPEG losslessly transcoded to JPEG-XL (its DCT coefficients
  recoded, typically ~20% smaller), from which libjxl rebuilds the very same JPEG bytes; checked
  by rebuilding before it is accepted, else the JPEG is passed through.
- a ``.cllc`` otherwise. With ``codec: auto`` (the default) an 8-bit RGB(A) image is coded with
  the learned coder (with ``steps`` of per-image adaptation) *and* with JPEG-XL lossless at
  ``jxl_effort``, and the smaller file is kept (``codec.api.encode``'s ``coder="auto"``: never
  larger than JPEG-XL's); the manifest's ``codec`` says which (``callic`` or ``jxl-lossless``).
  ``codec: callic`` forces the learned coder (what a job spec written before ``auto`` existed
  means by it). Other modes get the classical coders. Restoring writes the pixels and metadata
  back in the source's format (PNG, TIFF, PPM or BMP): the same pixels, not the same bytes.
- with ``codec: cca``, 8-bit RGB images are coded with the lossy codec (rate point ``quality``);
  every other image stays lossless, as with ``auto``. A lossy row's pixel hash is that of the reconstruction, which
  is what a restore writes back (and checks).

Before a ``.cllc`` is accepted, the file a restore would write must hold exactly what the source
holds as seen by *independent* readers (``codec.sourcecheck``: libpng, libtiff, imagecodecs' BMP
decoder and our own PNM parser, not the Pillow path that made the raster): the same sample dtype,
shape and values, one frame, and the same metadata. Anything else (a 16-bit or maxval-1000 PPM
our reader would cut, a uint32 or int16 TIFF, planar or extra-sample layouts Pillow misreads,
metadata the writer would drop) is passed through. With ``verify`` the ``.cllc`` is also decoded
on the CPU and checked against the pixel hash.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

import codec
from codec import fallback, registry, sourcecheck
from codec.cca.codec import LossySettings
from codec.errors import ImageReadError, UnsupportedError, VerificationError
from codec.images import InexactReadError, read_image, write_image_bytes
from codec.raster import Raster, hash_of_version
from pipeline.items import Encoded, Resources

if TYPE_CHECKING:  # codec.api imports torch: only the workers need it, not ``callic archive --help``
    from codec.registry import Encoder
    from codec.report import EncodeReport

# A coded image: its file, the encoder's report, and its encode seconds.
Coded = tuple[bytes, "EncodeReport", float]

WRITABLE = {"PNG", "TIFF", "PPM", "BMP"}
DEFAULT_CODEC = "auto"


@dataclass(frozen=True)
class CodecSettings(LossySettings):
    """Everything the job spec records about coding (``JobSpec.codec``): the codecs' settings
    (``LossySettings``, which holds the lossless ones; each codec takes its own fields,
    ``codec.settings.Settings.pick``, so each knob is defined and defaulted once, in the codec),
    the codec's name and the job's own choices (``batch``, ``jpeg``). A spec written by an older
    version lacks the newer fields (``jxl_effort``, the adaptation flags): they load with their
    defaults, which are what that version did; a field this version does not know is refused
    by name (``from_dict``)."""

    codec: str = DEFAULT_CODEC
    batch: int = 0  # images adapted together; 0 = 8 on a GPU, 1 on a CPU
    jpeg: str = "passthrough"  # or "jxl": JPEGs transcoded losslessly to JPEG-XL


def open_encoder(settings: CodecSettings, device: str, lazy: bool = False) -> Encoder:
    """The job's codec (``codec.registry``) opened with its settings: its models loaded (with
    ``lazy``, when first needed: the driver only needs their hashes)."""
    chosen = registry.codec(settings.codec)
    return chosen.open(chosen.settings_type.pick(settings.to_dict()), device, lazy)


def check_pinned(found: dict[str, str], pinned: dict[str, str], job: str = "the job") -> None:
    """``UnsupportedError`` unless the models an encoder codes with are those a job pinned."""
    wrong = [f"{k} {pinned[k][:16]} (here: {found.get(k, 'none')[:16]})" for k in pinned if found.get(k) != pinned[k]]
    if wrong:
        raise UnsupportedError(f"{job} needs {', '.join(wrong)}")


class ArchiveCodec:
    """``pipeline.items.ItemCodec`` for callic: built once per worker process. What a file is
    coded with is the job's codec (``codec.registry``); this class knows no codec by name."""

    def __init__(
        self,
        settings: CodecSettings,
        resources: Resources,
        pinned: dict[str, str] | None = None,
        restoring: bool = False,
    ) -> None:
        import torch

        from jobs.runtime import allow_large_images, setup_torch

        allow_large_images()  # in every worker process, as in the command's
        device = resources.device if resources.device == "cpu" or torch.cuda.is_available() else "cpu"
        setup_torch(resources.threads, device)
        self.settings, self.device = settings, device
        # Restoring loads no model up front: each file names its own (by hash), and an archive
        # whose models this installation lacks restores from the copies in its job folder.
        self.encoder = open_encoder(settings, device, lazy=restoring)
        fingerprint = self.encoder.fingerprint() if pinned or not restoring else {}
        check_pinned(fingerprint, pinned or {})
        self.model_hash = fingerprint.get("model", "")
        self.batch_size = settings.batch or (8 if device == "cuda" else 1)

    # ------------------------------------------------------------------ archive

    def encode_batch(self, items: list[tuple[str, bytes]], verify: bool) -> list[Encoded | BaseException]:
        out: list[Encoded | BaseException | None] = [None] * len(items)
        to_code: list[tuple[int, Raster, str]] = []
        for i, (_key, data) in enumerate(items):
            try:
                kind = self._classify(_key, data)
                if isinstance(kind, Encoded):
                    out[i] = kind
                else:
                    to_code.append((i, *kind))
            except Exception as exc:
                out[i] = exc
        if to_code:
            try:
                coded = self._code([r for _, r, _ in to_code], verify)
            except Exception:
                # One bad image must not sink its batch: code them one by one to find it.
                coded = []
                for _, r, _ in to_code:
                    try:
                        coded.extend(self._code([r], verify))
                    except Exception as exc:
                        coded.append(exc)
            for (i, raster, fmt), result in zip(to_code, coded, strict=True):
                out[i] = result if isinstance(result, BaseException) else self._fields(result, raster, fmt)
        return out  # type: ignore[return-value]

    def _classify(self, key: str, data: bytes) -> Encoded | tuple[Raster, str]:
        """Passthrough (an Encoded) or (pixels, format) to code. ``read_image`` refuses, with
        ``InexactReadError``, what it cannot give back exactly under the independent readers."""
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt, frames = im.format or "", getattr(im, "n_frames", 1)
        except UnidentifiedImageError as exc:
            try:  # e.g. a float64 or planar TIFF that libtiff reads and Pillow does not
                fmt = sourcecheck.facts(data).fmt
            except sourcecheck.Unverifiable:
                raise ImageReadError(
                    f"cannot read image {key}: not an image file callic reads (Pillow: {type(exc).__name__})"
                ) from None
            return self._passthrough(data, fmt)
        if fmt == "JPEG" and self.settings.jpeg == "jxl":
            return self._jpeg_jxl(data)
        if fmt not in WRITABLE or frames > 1:
            return self._passthrough(data, fmt)
        try:
            raster = read_image(data, name=key)
        except InexactReadError:
            return self._passthrough(data, fmt)
        return raster, fmt

    def _passthrough(self, data: bytes, fmt: str) -> Encoded:
        fields = {**_source_fields(data), "codec": "passthrough", "format": fmt}
        fields["bpsp"] = 8 * len(data) / max(1, fields.pop("samples"))
        fields["pixel_hash"] = None
        return Encoded(data, "", fields)

    def _jpeg_jxl(self, data: bytes) -> Encoded:
        start = time.perf_counter()
        blob = fallback.transcode_jpeg(data)  # checked: rebuilds the very same bytes, and smaller
        if blob is None:
            return self._passthrough(data, "JPEG")
        fields = self._passthrough(data, "JPEG").fields
        fields.update(
            codec="jpeg-jxl", bpsp=fields["bpsp"] * len(blob) / len(data), encode_s=time.perf_counter() - start
        )
        return Encoded(blob, ".jxl", fields)

    def _code(self, rasters: list[Raster], verify: bool) -> list[Coded]:
        """The files of a batch, each with its share of the batch's seconds (verifying excluded)."""
        start = time.perf_counter()
        pairs = self.encoder.encode_many(rasters, verify=verify)
        share = (time.perf_counter() - start) / max(1, len(rasters))
        return [(blob, report, share - report.timings.get("verify_s", 0.0)) for blob, report in pairs]

    def _fields(self, coded: Coded, raster: Raster, fmt: str) -> Encoded:
        blob, report, encode_s = coded
        coder = registry.coder_named(report.coder)
        fields = {
            **_pixel_fields(raster),
            "codec": coder.shown_name,
            "format": fmt,
            "bpsp": None if coder.lossy else 8 * len(blob) / raster.pixels.size,  # lossy rows: bpp and psnr
            "encode_s": encode_s,
            "verify_s": report.timings.get("verify_s"),
            "codec_facts": report.manifest_facts(),  # what only this codec knows (model, fine-tuning...)
            "pixel_hash": codec.info(blob)["pixel_sha256"],  # for a lossy file, its reconstruction's
        }
        if coder.lossy:  # the lossy units: bits per pixel, and the PSNR of what a restore gives back
            fields.update(bpp=8 * len(blob) / (raster.width * raster.height), psnr=report.psnr)
        return Encoded(blob, ".cllc", fields)

    # ------------------------------------------------------------------ restore

    def restore(self, blob: bytes, row: dict[str, Any]) -> bytes:
        if row["codec"] in ("passthrough", "jpeg-jxl"):
            data = blob if row["codec"] == "passthrough" else fallback.restore_jpeg(blob)
            if hashlib.sha256(data).hexdigest() != row["source_sha256"]:
                raise VerificationError(f"{row['source_key']}: restored bytes do not match the source's SHA-256")
            return data
        raster = self.encoder.decode(blob)
        # The manifest holds the hash of the blob's format version: v1 of the pixels, v2 of the image.
        version = codec.info(blob)["format_version"]
        if hash_of_version(raster, version).hex() != row["pixel_hash"]:
            raise VerificationError(f"{row['source_key']}: decoded image does not match the manifest's pixel hash")
        wrong = [f"{k} {v!r} (manifest: {row.get(k)!r})" for k, v in _pixel_fields(raster).items() if row.get(k) != v]
        if wrong:
            raise VerificationError(f"{row['source_key']}: decoded image differs from the manifest: {', '.join(wrong)}")
        return write_image_bytes(raster, row["format"])


def _source_fields(data: bytes) -> dict[str, Any]:
    """Pixel facts of a passed-through file for the manifest: the independent reader's sizes where
    it reads the file (Pillow misreads some layouts), else Pillow's, else unknown."""
    mode, size = None, None
    try:
        with Image.open(io.BytesIO(data)) as im:
            mode, size = im.mode, (im.height, im.width, len(im.getbands()))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        pass
    try:
        px = sourcecheck.facts(data).pixels
        height, width, channels = px.shape[0], px.shape[1], 1 if px.ndim == 2 else px.shape[2]
        depth, raw = 1 if px.dtype == np.bool_ else px.dtype.itemsize * 8, int(px.nbytes)
    except sourcecheck.Unverifiable:
        if size is None:
            raise ImageReadError("cannot read the image's size") from None
        height, width, channels = size
        depth = 1 if mode == "1" else 16 if mode and mode.startswith("I;16") else 32 if mode in ("I", "F") else 8
        raw = height * width * channels * max(1, depth // 8)
    fields = {"width": width, "height": height, "mode": mode, "bit_depth": depth, "raw_bytes": raw}
    return fields | {"samples": height * width * channels}


def _pixel_fields(raster: Raster) -> dict[str, Any]:
    px = raster.pixels
    return {
        "width": raster.width,
        "height": raster.height,
        "mode": raster.mode,
        "bit_depth": 1 if px.dtype == np.bool_ else px.dtype.itemsize * 8,
        "raw_bytes": int(px.nbytes),
    }


@dataclass(frozen=True)
class ArchiveCodecFactory:
    """Picklable: travels to every Ray worker, which calls it once."""

    settings: CodecSettings
    pinned: dict[str, str] | None = None  # ``JobSpec.models``: what every worker must code with
    restoring: bool = False  # restore and verify: no model loaded until a file names it

    def __call__(self, resources: Resources) -> ArchiveCodec:
        return ArchiveCodec(self.settings, resources, self.pinned, self.restoring)
