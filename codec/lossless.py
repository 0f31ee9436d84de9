"""The lossless codecs users pick (``codec.registry``): ``auto`` and ``callic``.

Both are ``codec.api.encode_many`` with a model loaded once: ``auto`` (the default) codes each
8-bit RGB(A) image with the learned coder and with JPEG-XL lossless and keeps the smaller file,
``callic`` keeps the learned file (what a job spec written before ``auto`` existed means). Other
images get the classical coders with either.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codec.defaults import (
    CALIBRATION_SCHEMES,
    DEFAULT_ADAPT_LR,
    DEFAULT_ADAPT_PATCHES,
    DEFAULT_CALIBRATION,
    DEFAULT_JXL_EFFORT,
    DEFAULT_LORA_RANK,
    DEFAULT_STEPS,
    DEFAULT_TUCKER_RANKS,
    MAX_PATCHES_PER_STREAM,
    MIN_ADAPT_PIXELS,
)
from codec.errors import UnsupportedError
from codec.raster import Raster
from codec.report import EncodeReport
from codec.settings import Settings

if TYPE_CHECKING:
    from codec.mgcf.rpft import AdaptConfig


@dataclass(frozen=True)
class LosslessSettings(Settings):
    """Every knob of the learned coder, with its one default (``codec.defaults``): ``encode``,
    ``archive`` and the job spec all go through this. A spec written before a field existed
    loads with its default (what ``codec.api.encode_many`` did then too, except ``calibration``,
    which files and restores record per file)."""

    steps: int = DEFAULT_STEPS  # per-image fine-tuning steps T (0: the pre-trained model)
    adapt_patches: int = DEFAULT_ADAPT_PATCHES  # most patches per step (0: all)
    model: str | None = None  # a model file; None = the shipped default
    jxl_effort: int = DEFAULT_JXL_EFFORT  # libjxl effort of the JPEG-XL files (1..10)
    calibration: int = DEFAULT_CALIBRATION  # backward-adaptive calibration scheme (0: none)
    patches_per_stream: int | None = None  # None: the default for the model's patch size
    lr: float = DEFAULT_ADAPT_LR  # Adam learning rate of the adapters
    adapt_order: str = "rate"  # patch order: rate (RPFT), random or all
    adapt_layers: str = "all"  # what adapts: all, last or head
    adapt_min_pixels: int = MIN_ADAPT_PIXELS  # smaller images are not adapted
    adapt_stop_below: float = 0.0  # early stop on a small estimated gain (0: every step)
    lora_rank: int = DEFAULT_LORA_RANK
    tucker_ranks: tuple[int, int, int] = DEFAULT_TUCKER_RANKS

    def __post_init__(self) -> None:
        object.__setattr__(self, "tucker_ranks", tuple(self.tucker_ranks))  # a JSON spec gives a list

    def check(self) -> None:
        """``ValueError`` naming the first value out of range (the CLI makes it a usage error, a
        worker an ``UnsupportedError``), before any image is read."""
        from codec.fallback import check_jxl_effort

        check_jxl_effort(self.jxl_effort)
        if self.calibration not in CALIBRATION_SCHEMES:
            raise ValueError(f"calibration must be one of {CALIBRATION_SCHEMES}, not {self.calibration}")
        if self.patches_per_stream is not None and not 1 <= self.patches_per_stream <= MAX_PATCHES_PER_STREAM:
            raise ValueError(f"patches_per_stream must be in 1..{MAX_PATCHES_PER_STREAM}")
        self.adapt_config()

    def adapt_config(self) -> AdaptConfig | None:
        """The per-image fine-tuning these settings ask for (None at T = 0); ``ValueError`` names
        a value out of range."""
        if self.steps == 0:
            return None
        from codec.mgcf.adapters import AdapterSpec
        from codec.mgcf.rpft import AdaptConfig

        return AdaptConfig(
            steps=self.steps,
            lr=self.lr,
            order=self.adapt_order,
            layers=self.adapt_layers,
            max_patches=self.adapt_patches or None,
            spec=AdapterSpec(self.lora_rank, self.tucker_ranks),
            min_pixels=self.adapt_min_pixels,
            stop_below=self.adapt_stop_below,
        )


# Models open in this process, by (resolved file, device): encoders of the same model share one
# load (the bench opens one encoder per variant). Weak: a model no encoder holds is freed.
_OPEN_MODELS: weakref.WeakValueDictionary[tuple[str, str], Any] = weakref.WeakValueDictionary()


class LosslessEncoder:
    """``codec.registry.Encoder``: the model loaded once per process on ``device`` and shared by
    every encoder of the same file (``_OPEN_MODELS``); on a GPU, verifying copies its exact path to
    the CPU once (``codec.mgcf.coder.Model.on_cpu``)."""

    def __init__(self, settings: LosslessSettings, device: str, coder: str, lazy: bool = False) -> None:
        try:
            settings.check()
        except ValueError as exc:
            raise UnsupportedError(str(exc)) from None
        self.settings, self.device, self.coder = settings, device, coder
        self.adapt = settings.adapt_config()
        self._model = None
        if not lazy:  # a job's workers: a missing or wrong model fails as they start
            _ = self.model

    @property
    def model(self) -> Any:
        """The model, loaded on first use (``lazy``: ``callic encode`` of images it never codes,
        gray or 16-bit, never loads it)."""
        if self._model is None:
            from codec import api
            from codec.modelfiles import default_model_path

            key = (str(Path(self.settings.model or default_model_path()).resolve()), self.device)
            model = _OPEN_MODELS.get(key)
            if model is None:
                model = _OPEN_MODELS[key] = api.load_model(self.settings.model, device=self.device)
            self._model = model
        return self._model

    def encode_many(self, rasters: list[Raster], *, verify: bool) -> list[tuple[bytes, EncodeReport]]:
        from codec.api import encode_many, learned_path

        if not rasters:
            return []
        return encode_many(
            rasters,
            model=self.model if any(learned_path(r) for r in rasters) else None,
            device=self.device,
            adapt=self.adapt,
            verify=verify,
            coder=self.coder,
            jxl_effort=self.settings.jxl_effort,
            calibration=self.settings.calibration,
            patches_per_stream=self.settings.patches_per_stream,
        )

    def fingerprint(self) -> dict[str, str]:
        """The model's hash, and a corpus-adapted model's base (``base_model``), which decoding
        needs too; from the file's bytes while it is not loaded (a job's driver)."""
        from codec import modelfiles

        if self._model is not None:
            file = self._model.file
            found, base = {"model": self._model.digest.hex()}, file.base if file is not None else None
        else:
            path = self.settings.model or modelfiles.default_model_path()
            found, base = (
                {"model": modelfiles.digest_of(path).hex()},
                modelfiles.base_of(modelfiles.read_model_bytes(path)),
            )
            if base is not None:  # found (and so held for the job's copies) as decoding will find it
                modelfiles.find_by_hash(base, modelfiles.mgcf_file_name(base))
        return found | ({"base_model": base.hex()} if base is not None else {})

    def decode(self, data: bytes) -> Raster:
        """With this encoder's model once it is loaded or was given as a file; a lazy encoder
        (restore) loads none of its own: the file's model is found by the hash it names."""
        from codec.api import decode

        own = self.model if self._model is not None or self.settings.model else None
        return decode(data, model=own, device=self.device)


@dataclass(frozen=True)
class LosslessCodec:
    """``codec.registry.Codec``; ``coder`` is ``codec.api.encode``'s (``auto`` or ``learned``)."""

    name: str
    coder: str
    settings_type: type = LosslessSettings

    def open(self, settings: Any, device: str, lazy: bool = False) -> LosslessEncoder:
        return LosslessEncoder(settings, device, self.coder, lazy)


AUTO = LosslessCodec("auto", "auto")
LEARNED = LosslessCodec("callic", "learned")
