"""Corpus adaptation (issue 19): one set of adapters fine-tuned on a sample of a job's images,
paid for once and used for every image of the job.

An archive job's images often share their statistics (one camera, one scanner, one renderer):
a model adapted to a sample of them codes the rest in fewer bits, and its adapters are stored
once, as a corpus-adapted model file (``codec.mgcf.weights``: a few tens of KB naming the base
model by hash) that files name like any model. Per-image adaptation (RPFT) still runs on top.

How [choices, measured on vc2crops24 with the f984 model: 16 images trained, 8 held out, 150
steps of 8 patches, LoRA rank 8 and Tucker 4 x 3 x 3 (52,346 numbers, 17.7 KB coded): estimated
bpsp of the held-out images 3.341 -> 3.231 (-3.3%) without calibration, 3.202 -> 3.173 (-0.9%)
with it]:

- the adapters are per-image RPFT's (``codec.mgcf.adapters``) at higher ranks, so the coding
  path, the exact merge and the ADPT coding are the same code;
- training patches are drawn at random (seeded) from the sample's *training* images, a fixed
  number per step, plain Adam; the loss is the MDL total at the sample's scale: estimated bits
  per subpixel of the step's patches plus the adapters' bits over the sample's subpixels (the
  job is at least as large, so the real bargain is better than the one trained for);
- the decision to keep them is made on *held-out* images of the sample (every third, at least
  one), never on the patches trained on: their estimated saving per subpixel, scaled to the whole
  sample, must exceed the model file's bits. Where the job would keep a classical file instead
  (``auto``: JPEG-XL where it is smaller), bits count as saved only below that file's size. With
  calibration on (the coder's default) the estimate is of the bits after calibration's
  corrections (``codec.mgcf.calibration_loss``, fitted per image within each pass of
  ``EVAL_CHUNK`` patches: an approximation of the coder's backward-adaptive calibration over the
  whole image), which take back part of what adaptation gains;
- at most ``max_patches`` patches of each image are used (a random subset): a sample of large
  photos then costs the same memory and time as one of small ones.

Bits here are estimates from the float model; the job's real file sizes are what it reports.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from codec.defaults import DEFAULT_CORPUS_STEPS
from codec.mgcf.adapters import AdapterSet, AdapterSpec
from codec.mgcf.learned import patchify, real_masks
from codec.mgcf.model import MGCF
from codec.mgcf.rpft import ImageAdapters, patch_bits

DEFAULT_CORPUS_SPEC = AdapterSpec(8, (4, 3, 3))
EVAL_CHUNK = 8  # patches per evaluation pass


@dataclass(frozen=True)
class CorpusConfig:
    """How to adapt to a corpus: ``steps`` Adam steps (fewer when ``minutes`` run out first) of
    ``patches`` patches each, at learning rate ``lr``, adapters of ranks ``spec``."""

    steps: int = DEFAULT_CORPUS_STEPS
    minutes: float | None = None
    patches: int = 8
    lr: float = 1e-3
    spec: AdapterSpec = field(default_factory=lambda: DEFAULT_CORPUS_SPEC)
    max_patches: int = 64  # per image
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.patches < 1 or self.max_patches < 1:
            raise ValueError("corpus steps, patches per step and patches per image must be >= 1")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError("corpus minutes must be > 0")
        if not self.lr > 0:
            raise ValueError("the corpus learning rate must be > 0")


@dataclass
class CorpusAdapted:
    """The outcome. Bits are float-model estimates of the held-out images' patches, per image."""

    adapters: AdapterSet
    held_out: list[int]  # indices in the sample
    base_bits: list[float]
    adapted_bits: list[float]
    subpixels: list[float]  # of the patches the bits are of
    sample_subpixels: float  # of the whole sample
    steps: int
    seconds: float

    def bpsp(self) -> tuple[float, float]:
        """Held-out bits per subpixel, before and after (estimated)."""
        n = sum(self.subpixels)
        return sum(self.base_bits) / n, sum(self.adapted_bits) / n

    def saved_bits(self, floor_bpsp: list[float] | None = None) -> float:
        """Estimated bits the adapters save on the whole sample: the held-out saving per subpixel,
        scaled. ``floor_bpsp``: per held-out image, the bpsp of the file the job keeps where the
        learned one is larger (``auto``'s classical file): bits are only saved below it."""
        saved = 0.0
        for i, (base, adapted, n) in enumerate(zip(self.base_bits, self.adapted_bits, self.subpixels, strict=True)):
            floor = math.inf if floor_bpsp is None else floor_bpsp[i] * n
            saved += min(base, floor) - min(adapted, floor)
        return saved / sum(self.subpixels) * self.sample_subpixels

    def pays(self, model_bytes: int, floor_bpsp: list[float] | None = None) -> bool:
        return self.saved_bits(floor_bpsp) > 8 * model_bytes


@dataclass
class _Patches:
    x: torch.Tensor  # (N, 3, P, P) float 0..255
    mask: torch.Tensor  # (N, P, P)
    image: torch.Tensor  # (N,)


def _patches(images: list[np.ndarray], p: int, cfg: CorpusConfig, device: torch.device) -> _Patches:
    gen = torch.Generator().manual_seed(cfg.seed)
    xs, masks, owner = [], [], []
    for i, px in enumerate(images):
        all_patches = patchify(px, p)
        keep = torch.randperm(len(all_patches), generator=gen)[: cfg.max_patches].sort().values
        xs.append(all_patches[keep].permute(0, 3, 1, 2).float())
        full = real_masks(px.shape[0], px.shape[1], p, range(len(all_patches)))
        masks.append(full[keep])
        owner.append(torch.full((len(keep),), i))
    return _Patches(torch.cat(xs).to(device), torch.cat(masks).to(device), torch.cat(owner).to(device))


def _bits(model: MGCF, data: _Patches, adapters: ImageAdapters | None, calibrated: bool, n: int) -> list[float]:
    """Estimated bits of each of ``n`` images' patches, with calibration's corrections if ``calibrated``."""
    total = torch.zeros(n, dtype=torch.float64)
    with torch.no_grad():
        deltas = None if adapters is None else adapters.patch_deltas(torch.zeros(1, dtype=torch.long))
        for s in range(0, len(data.x), EVAL_CHUNK):
            sl = slice(s, s + EVAL_CHUNK)
            groups = data.image[sl] if calibrated else None
            bits = patch_bits(model, data.x[sl], data.mask[sl], deltas, False, None, groups)
            total.index_add_(0, data.image[sl].cpu(), bits.double().cpu())
    return total.tolist()


def split(n: int) -> tuple[list[int], list[int]]:
    """Training and held-out image indices of a sample of ``n`` >= 2: every third held out."""
    if n < 2:
        raise ValueError("corpus adaptation needs at least 2 sample images (one to train on, one to check)")
    held = list(range(2, n, 3)) or [n - 1]
    return [i for i in range(n) if i not in held], held


def adapt_corpus(model: MGCF, images: list[np.ndarray], cfg: CorpusConfig, calibration: int = 0) -> CorpusAdapted:
    """Fine-tune one adapter set on (H, W, 3) uint8 ``images`` (see the module docstring).
    ``calibration``: the coder's scheme; with one, the held-out estimate is after its corrections.
    The model's parameters are frozen and it is put in eval mode."""
    start = time.perf_counter()
    device = model.head.weight.device
    for prm in model.parameters():
        prm.requires_grad_(False)
    model.eval()
    train_i, held_i = split(len(images))
    p = model.cfg.patch
    train = _patches([images[i] for i in train_i], p, cfg, device)
    held = _patches([images[i] for i in held_i], p, cfg, device)
    sample_subpixels = float(sum(3 * px.shape[0] * px.shape[1] for px in images))
    adapters = ImageAdapters(model, cfg.spec, 1)
    optimizer = torch.optim.Adam(adapters.trainable(0), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    deadline = None if cfg.minutes is None else start + 60 * cfg.minutes
    steps = 0
    for t in range(cfg.steps):
        idx = torch.randint(len(train.x), (cfg.patches,), generator=gen).to(device)
        optimizer.zero_grad(set_to_none=True)
        deltas = adapters.patch_deltas(torch.zeros(1, dtype=torch.long, device=device))
        bits = patch_bits(model, train.x[idx], train.mask[idx], deltas, False)
        selected = 3.0 * float(train.mask[idx].sum())
        loss = bits.sum() / selected + adapters.rate_bits(t).sum() / sample_subpixels
        loss.backward()
        optimizer.step()
        steps = t + 1
        if deadline is not None and time.perf_counter() > deadline:
            break
    calibrated = bool(calibration)
    n = len(held_i)
    return CorpusAdapted(
        adapters.export(0),
        held_i,
        _bits(model, held, None, calibrated, n),
        _bits(model, held, adapters, calibrated, n),
        (3.0 * torch.zeros(n).index_add_(0, held.image.cpu(), held.mask.sum((1, 2)).float().cpu())).tolist(),
        sample_subpixels,
        steps,
        time.perf_counter() - start,
    )
