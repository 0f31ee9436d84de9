"""The lossless codecs users pick (``codec.registry``): ``auto`` and ``callic``.

Both are ``codec.api.encode_many`` with a model loaded once: ``auto`` (the default) codes each
8-bit RGB(A) image with the learned coder and with JPEG-XL lossless and keeps the smaller file,
``callic`` keeps the learned file (what a job spec written before ``auto`` existed means). Other
images get the classical coders with either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from codec.defaults import DEFAULT_ADAPT_PATCHES, DEFAULT_JXL_EFFORT, DEFAULT_STEPS
from codec.errors import UnsupportedError
from codec.raster import Raster
from codec.report import EncodeReport
from codec.settings import Settings


@dataclass(frozen=True)
class LosslessSettings(Settings):
    steps: int = DEFAULT_STEPS  # per-image fine-tuning steps T (0: the pre-trained model)
    adapt_patches: int = DEFAULT_ADAPT_PATCHES  # most patches per step (0: all)
    model: str | None = None  # a model file; None = the shipped default
    jxl_effort: int = DEFAULT_JXL_EFFORT  # libjxl effort of the JPEG-XL files (1..10)


class LosslessEncoder:
    """``codec.registry.Encoder``: the model loaded once on ``device`` (and on the CPU for
    verifying and decoding, only when first needed)."""

    def __init__(self, settings: LosslessSettings, device: str, coder: str) -> None:
        from codec import api, fallback
        from codec.rpft import AdaptConfig

        try:
            fallback.check_jxl_effort(settings.jxl_effort)
        except ValueError as exc:
            raise UnsupportedError(str(exc)) from None
        self.settings, self.device, self.coder = settings, device, coder
        self.model = api.load_model(settings.model, device=device)
        self.adapt = (
            AdaptConfig(steps=settings.steps, max_patches=settings.adapt_patches or None) if settings.steps else None
        )

    def encode_many(self, rasters: list[Raster], *, verify: bool) -> list[tuple[bytes, EncodeReport]]:
        from codec.api import encode_many

        if not rasters:
            return []
        return encode_many(
            rasters,
            model=self.model,
            device=self.device,
            adapt=self.adapt,
            verify=verify,
            coder=self.coder,
            jxl_effort=self.settings.jxl_effort,
        )

    def fingerprint(self) -> dict[str, str]:
        return {"model": self.model.digest.hex()}

    def decode(self, data: bytes) -> Raster:
        from codec.api import decode

        return decode(data, model=self.model, device=self.device)


@dataclass(frozen=True)
class LosslessCodec:
    """``codec.registry.Codec``; ``coder`` is ``codec.api.encode``'s (``auto`` or ``learned``)."""

    name: str
    coder: str
    settings_type: type = LosslessSettings

    def open(self, settings: Any, device: str) -> LosslessEncoder:
        return LosslessEncoder(settings, device, self.coder)


AUTO = LosslessCodec("auto", "auto")
LEARNED = LosslessCodec("callic", "learned")
