"""The lossy codec users pick (``codec.registry``): ``cca``.

8-bit RGB images get the CCA codec at one rate point (a shipped one, ``quality``, or a model
file); every other image is coded losslessly as ``auto`` codes it, so a job never loses an image
it cannot code lossily. Its reports carry the PSNR of the reconstruction a restore gives back
(the encoder computed it, so nothing is decoded twice to measure it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from codec.errors import UnsupportedError
from codec.lossless import AUTO, LosslessEncoder, LosslessSettings
from codec.raster import Raster
from codec.report import EncodeReport


@dataclass(frozen=True)
class LossySettings(LosslessSettings):
    """The lossless fields code the images CCA does not take."""

    quality: int | None = None  # the shipped rate point, 1 = fewest bits (None: the highest)
    lossy_model: str | None = None  # a model file instead of a shipped rate point
    lossy_model_hash: str | None = None  # the model a job was started with: resume refuses another


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR over all samples (one MSE for the image, peak 255), as the CCA paper reports it."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


class LossyEncoder:
    def __init__(self, settings: LossySettings, device: str, lazy: bool = False) -> None:
        from codec.modelfiles import digest_of, lossy_model_path, quality_levels

        self.lossless = LosslessEncoder(LosslessSettings.pick(settings.to_dict()), device, AUTO.coder, lazy)
        self.settings, self.device, self._model = settings, device, None
        self.path = settings.lossy_model or lossy_model_path(settings.quality)  # ValueError: a bad quality
        self.digest = digest_of(self.path).hex()
        # The rate point the files are coded at, for the manifest (none for a model file).
        self.quality = None if settings.lossy_model else settings.quality or len(quality_levels())
        if settings.lossy_model_hash and self.digest != settings.lossy_model_hash:
            raise UnsupportedError(
                f"the job needs lossy model {settings.lossy_model_hash[:16]}, "
                f"not {self.digest[:16]} ({settings.lossy_model or 'the shipped rate point'})"
            )
        if not lazy:
            _ = self.model

    @property
    def model(self) -> Any:
        """The CCA model, loaded on first use (its hash is known from the file's bytes before)."""
        if self._model is None:
            from codec.cca.api import load_lossy_model

            self._model = load_lossy_model(self.path, None, self.device)
        return self._model

    def encode_many(self, rasters: list[Raster], *, verify: bool) -> list[tuple[bytes, EncodeReport]]:
        lossy = [r.mode == "RGB" and r.pixels.dtype == np.uint8 for r in rasters]
        rest = iter(self.lossless.encode_many([r for r, y in zip(rasters, lossy, strict=True) if not y], verify=verify))
        return [self._lossy(r, verify) if y else next(rest) for r, y in zip(rasters, lossy, strict=True)]

    def _lossy(self, raster: Raster, verify: bool) -> tuple[bytes, EncodeReport]:
        from codec.cca.api import encode_lossy_with_reconstruction

        timings: dict[str, float] = {}
        blob, recon = encode_lossy_with_reconstruction(raster, model=self.model, verify=verify, timings=timings)
        report = EncodeReport(bytes=len(blob), coder="cca", model_hash=self.digest, psnr=psnr(raster.pixels, recon))
        report.timings.update(timings)
        if self.quality is not None:
            report.extra_facts["quality"] = str(self.quality)
        return blob, report

    def fingerprint(self) -> dict[str, str]:
        return {**self.lossless.fingerprint(), "lossy_model": self.digest}

    def decode(self, data: bytes) -> Raster:
        from codec.reading import decode

        return decode(data, model=[self.lossless.model, self.model], device=self.lossless.device)


@dataclass(frozen=True)
class LossyCodec:
    name: str = "cca"
    settings_type: type = LossySettings

    def open(self, settings: Any, device: str, lazy: bool = False) -> LossyEncoder:
        return LossyEncoder(settings, device, lazy)


CCA = LossyCodec()
