"""RPFT, Rate-guided Progressive Fine-Tuning (CALLIC section 5), for one image or a batch of them.

1. Rate estimate: the base float model's estimated bits of every P x P patch (real pixels only).
2. Fine-tuning: T Adam steps on the adapters only (the base weights stay frozen). At step t each
   image trains on its first ``F(t)`` fraction of patches, highest estimated rate first, where
   ``F(t) = b + (1 - b) * S(t / (T (1 - d)))**e`` and S is the smoothstep clipped to [0, 1].
   Loss per image = estimated bpsp of its selected patches + adapter bits / image subpixels (the
   MDL total per subpixel); adapters are quantized straight-through in the forward pass, and the
   adapter bits are their rate under a zero-mean logistic prior of scale one quantization step
   (the paper's ratio: scale 0.05 for step 0.05) with uniform noise. Adam, lr 2e-3 [choice: the
   paper's 1e-2 diverges with our parametrization; 2e-3 was best of 1e-3, 2e-3 and 4e-3].
3. The quantized adapters and estimates of the image's bits with and without them; the caller
   (``codec.mgcf.coder``) decides whether they pay for themselves.

A batch of images is adapted together, one optimizer step for all of them. On a GPU a forward
pass mixes their patches, each carrying its own image's adapter updates (``codec.mgcf.model``: batched
low-rank products and a grouped depth-wise conv) over the shared base weights; on a CPU each pass
holds one image's patches, with its updates merged into the weights (see ``_run``). Each image's
loss is its own, and Adam is elementwise, so each image gets the adapters it would get alone, up
to float rounding.

Beyond the paper, ``max_patches`` caps the patches an image trains on per step (a random subset,
fixed by the seed, of its first F(t)): large images then cost the same per step as small ones.
And ``layers`` chooses what adapts: ``all`` (every block and the head, as the paper), ``last``
(the last block and the head) or ``head``. The frozen layers before them then see the same
patches at every step, so their output is computed once per patch (in the rate estimate's pass)
and kept, up to ``FEATURE_CACHE_BYTES``; a step costs only the adapted layers' forward and
backward. The file is the same format: the frozen layers' deltas are zeros, which the ADPT
section codes in a few bits per tensor.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from codec.defaults import DEFAULT_ADAPT_LR, DEFAULT_STEPS, MIN_ADAPT_PIXELS
from codec.mgcf import calibration_loss
from codec.mgcf.adapters import MAX_DELTA, STEP, AdapterSet, AdapterSpec, factors, layout, start_values
from codec.mgcf.learned import patchify, real_masks
from codec.mgcf.mixture import nll_bits
from codec.mgcf.model import MGCF, Deltas

ORDERS = ("rate", "random", "all")
LAYERS = ("all", "last", "head")
PRIOR_SCALE = 1.0  # in quantization steps
FEATURE_CACHE_BYTES = 512 << 20  # frozen layers' outputs kept per adaptation (layers other than all)


@dataclass(frozen=True)
class AdaptConfig:
    """How to fine-tune. ``steps`` = T (0: no adaptation; default ``codec.defaults.DEFAULT_STEPS``,
    the one default of the CLI, the API and the bench); b, d, e shape F(t); ``order`` is the
    patch order: ``rate`` (RPFT), ``random`` (same F(t), shuffled patches) or ``all`` (F = 1).
    ``min_pixels``: ``codec.api`` does not adapt images with fewer pixels (height x width; default
    ``codec.defaults.MIN_ADAPT_PIXELS``, where adapters stop paying); 0 adapts every image, for
    experiments and tests on small crops."""

    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_ADAPT_LR
    b: float = 0.2
    d: float = 0.1
    e: float = 1.0
    order: str = "rate"
    max_patches: int | None = None
    chunk_patches: int | None = None  # patches per forward/backward pass (default: 16 CPU, 128 GPU)
    mixed_passes: bool | None = None  # may a pass mix images (default: on a GPU only; see _run)
    spec: AdapterSpec = field(default_factory=AdapterSpec)
    seed: int = 0
    min_pixels: int = MIN_ADAPT_PIXELS
    layers: str = "all"  # what adapts: all, last (block and head) or head (see the module docstring)
    stop_below: float = 0.0  # early stop (0: never, T steps exactly); see ``adapt``

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError("steps must be >= 0")
        if self.min_pixels < 0:
            raise ValueError("min_pixels must be >= 0")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}")
        if not (0 < self.b <= 1 and 0 <= self.d < 1 and self.e > 0):
            raise ValueError("need 0 < b <= 1, 0 <= d < 1, e > 0")
        if self.max_patches is not None and self.max_patches < 1:
            raise ValueError("max_patches must be >= 1")
        if self.layers not in LAYERS:
            raise ValueError(f"layers must be one of {LAYERS}")
        if not 0 <= self.stop_below < 1:
            raise ValueError("stop_below must be in [0, 1)")

    def first_block(self, depth: int) -> int:
        """The first adapted block of a model of ``depth`` blocks (``depth``: the head only)."""
        return {"all": 0, "last": depth - 1, "head": depth}[self.layers]


def fraction(t: int, cfg: AdaptConfig) -> float:
    """F(t): the fraction of an image's patches (highest rate first) trained on at step t."""
    if cfg.order == "all":
        return 1.0
    x = min(1.0, max(0.0, t / (cfg.steps * (1 - cfg.d))))
    return cfg.b + (1 - cfg.b) * (x * x * (3 - 2 * x)) ** cfg.e


@dataclass
class Adapted:
    """One image's outcome. Bits are estimates from the float model (not coded sizes)."""

    adapters: AdapterSet
    base_bits: float
    adapted_bits: float  # image bits with the quantized adapters, adapter bits not included
    timings: dict[str, float]
    steps: int = 0  # steps run: T, or fewer when ``AdaptConfig.stop_below`` stopped early


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class ImageAdapters(nn.Module):
    """Trainable adapters of ``n`` images: a delta per factor and image, in real units."""

    def __init__(self, model: MGCF, spec: AdapterSpec, n: int):
        super().__init__()
        self.cfg, self.spec = model.cfg, spec
        device = model.head.weight.device
        self.factors = factors(model.cfg, spec)
        self.delta = nn.ParameterList(nn.Parameter(torch.zeros(n, *f.shape, device=device)) for f in self.factors)
        for salt, f in enumerate(self.factors):
            self.register_buffer(f"start{salt}", start_values(f, salt).float().to(device) * STEP, persistent=False)

    def _steps(self, i: int) -> torch.Tensor:
        return self.delta[i].clamp(-MAX_DELTA * STEP, MAX_DELTA * STEP) / STEP

    def values(self) -> dict[str, torch.Tensor]:
        """Factor values (n, *shape) with straight-through quantized deltas."""
        return {
            f.name: getattr(self, f"start{i}") + STEP * _RoundSTE.apply(self._steps(i))
            for i, f in enumerate(self.factors)
        }

    def patch_deltas(self, index: torch.Tensor) -> Deltas:
        """Per-patch updates for ``MGCF.forward``; ``index`` gives each patch's image."""
        v = self.values()
        out: Deltas = {}
        for slot in layout(self.cfg, self.spec):
            f = {x.name.rsplit(".", 1)[1]: v[x.name] for x in slot.factors}
            if slot.kind == "lora":
                out[slot.layer] = (f["down"][index], f["up"][index])
            else:
                kernel = torch.einsum("nabc,nma,nib,njc->nmij", f["core"], f["channel"], f["row"], f["col"])
                out[slot.layer] = kernel[index].unsqueeze(2)
        return out

    def rate_bits(self, seed: int) -> torch.Tensor:
        """Estimated bits of each image's deltas (n,): logistic prior, uniform-noise relaxation.
        Every image gets the same noise (from ``seed``), so its result does not depend on the batch."""
        gen = torch.Generator().manual_seed(seed)
        total = 0.0
        for i in range(len(self.factors)):
            q = self._steps(i)
            noise = torch.rand(q.shape[1:], generator=gen).to(q.device)
            x = (q + noise - 0.5).abs()  # the prior is symmetric: work in its thin tail
            p = torch.sigmoid((0.5 - x) / PRIOR_SCALE) - torch.sigmoid((-0.5 - x) / PRIOR_SCALE)
            total = total - torch.log2(p.clamp_min(1e-12)).flatten(1).sum(1)
        return total

    def trainable(self, first_block: int) -> list[nn.Parameter]:
        """The deltas of blocks ``first_block..`` and of the head (the others stay zero)."""
        depth = self.cfg.depth
        return [d for d, f in zip(self.delta, self.factors, strict=True) if _block_of(f.name, depth) >= first_block]

    def export(self, i: int) -> AdapterSet:
        deltas = {f.name: torch.round(self._steps(j)[i].detach()).long().cpu() for j, f in enumerate(self.factors)}
        return AdapterSet(self.spec, deltas)


def _block_of(name: str, depth: int) -> int:
    """The block a factor adapts (``blocks.3.fc1.up`` -> 3); the head counts as block ``depth``."""
    return int(name.split(".")[1]) if name.startswith("blocks.") else depth


@dataclass
class _Batch:
    """Every patch of every image, concatenated; ``first[i]`` is image i's first patch."""

    patches: torch.Tensor  # (N, 3, P, P) float, 0..255
    mask: torch.Tensor  # (N, P, P) real pixels
    image: torch.Tensor  # (N,) image of each patch
    first: list[int]
    subpixels: torch.Tensor  # (images,) 3 * H * W

    @classmethod
    def of(cls, images: list[np.ndarray], p: int, device: torch.device) -> _Batch:
        patches, masks, first = [], [], [0]
        for px in images:
            h, w, _ = px.shape
            patches.append(patchify(px, p))
            masks.append(real_masks(h, w, p, range(patches[-1].shape[0])))
            first.append(first[-1] + patches[-1].shape[0])
        image = torch.repeat_interleave(torch.arange(len(images)), torch.tensor(first).diff())
        subpixels = torch.tensor([3.0 * px.shape[0] * px.shape[1] for px in images], device=device)
        x = torch.cat(patches).permute(0, 3, 1, 2).float().to(device)
        return cls(x, torch.cat(masks).to(device), image.to(device), first, subpixels)

    def patch_range(self, i: int) -> torch.Tensor:
        return torch.arange(self.first[i], self.first[i + 1], device=self.patches.device)


@dataclass(frozen=True)
class _Passes:
    """How patches go through the model: ``chunk`` per pass, bf16 autocast (``amp``, CUDA), and
    whether one pass may hold several images' patches (``mixed``)."""

    chunk: int
    amp: bool
    mixed: bool


class _Trunk:
    """The frozen layers' output (``MGCF.trunk`` up to ``first`` blocks) per patch: computed the
    first time a patch is seen, kept while ``FEATURE_CACHE_BYTES`` allow (else recomputed)."""

    def __init__(self, model: MGCF, batch: _Batch, first: int, amp: bool):
        self.model, self.batch, self.first, self.amp = model, batch, first, amp
        p = model.cfg.patch
        self.room = FEATURE_CACHE_BYTES // (p * p * model.cfg.width * (2 if amp else 4))
        self.kept: dict[int, torch.Tensor] = {}

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        ids = idx.tolist()
        fresh: dict[int, torch.Tensor] = {}
        missing = [i for i in ids if i not in self.kept]
        if missing:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                out = self.model.trunk(self.batch.patches[torch.tensor(missing, device=idx.device)], self.first)
            for i, row in zip(missing, out, strict=True):
                if len(self.kept) < self.room:
                    self.kept[i] = row
                else:
                    fresh[i] = row
        return torch.stack([self.kept[i] if i in self.kept else fresh[i] for i in ids])


def patch_bits(
    model: MGCF,
    x: torch.Tensor,
    mask: torch.Tensor,
    deltas: Deltas | None,
    amp: bool,
    trunk: tuple[int, torch.Tensor] | None = None,
    calibrated: torch.Tensor | None = None,
) -> torch.Tensor:
    """Estimated bits of each patch's real pixels, (B,). ``trunk``: (first block, its input
    features) when the layers before it are frozen and already computed. ``calibrated``: each
    patch's image, to estimate the bits after calibration's corrections (``codec.mgcf.calibration_loss``)."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        params = model(x, deltas) if trunk is None else model.tail(trunk[1], trunk[0], deltas)
    params, pixels, k = params.float(), x.permute(0, 2, 3, 1), model.cfg.mixtures
    if calibrated is not None:
        shift, log_change = calibration_loss.corrections(params, pixels, mask.bool(), calibrated, k)
        params = calibration_loss.corrected(params, shift, log_change, k)
    bits = nll_bits(params, pixels, k).sum(-1)
    return (bits * mask).sum((1, 2))


def _run(
    model: MGCF,
    adapters: ImageAdapters | None,
    batch: _Batch,
    which: torch.Tensor,
    passes: _Passes,
    grad_scale: torch.Tensor | None = None,
    trunk: _Trunk | None = None,
    calibrated: bool = False,
) -> torch.Tensor:
    """Estimated bits of patches ``which`` (global indices, grouped by image). With ``grad_scale``
    (per image) it also back-propagates sum(bits * scale), one pass at a time.

    Mixed passes (the GPU default) hold patches of several images, each with its own image's
    updates: one big pass keeps a GPU busy. Otherwise (the CPU default) a pass holds one image's
    patches, whose updates are merged into the weights once (``codec.mgcf.model``): cheaper on a CPU,
    and a pass then never depends on the other images of the batch. With a ``trunk``, only the
    layers after it run (on its kept features). ``calibrated``: bits after calibration's corrections.
    """
    out = []
    for idx in _chunks(which, batch.image, passes.chunk, passes.mixed):
        img = batch.image[idx]
        deltas = None if adapters is None else adapters.patch_deltas(img if passes.mixed else img[:1])
        kept = None if trunk is None else (trunk.first, trunk.features(idx))
        groups = img if calibrated else None
        bits = patch_bits(model, batch.patches[idx], batch.mask[idx], deltas, passes.amp, kept, groups)
        if grad_scale is not None:
            (bits * grad_scale[img]).sum().backward()
        out.append(bits.detach())
    return torch.cat(out) if out else torch.zeros(0, device=batch.patches.device)


def _chunks(which: torch.Tensor, image: torch.Tensor, chunk: int, mixed: bool) -> list[torch.Tensor]:
    """``which`` in passes of at most ``chunk`` patches; unless ``mixed``, each of one image only."""
    runs = [which]
    if not mixed and len(which):
        ends = (torch.nonzero(image[which].diff()).flatten() + 1).tolist()
        runs = list(torch.tensor_split(which, ends))
    return [run[s : s + chunk] for run in runs for s in range(0, len(run), chunk)]


def _step_seed(cfg: AdaptConfig, t: int) -> int:
    return cfg.seed * 1_000_003 + t + 1


def _selection(t: int, cfg: AdaptConfig, order: torch.Tensor) -> torch.Tensor:
    """The patches an image trains on at step t (random draws depend on (seed, t) only)."""
    n = max(1, math.ceil(fraction(t, cfg) * len(order) - 1e-9))
    chosen = order[:n]
    if cfg.max_patches is not None and n > cfg.max_patches:
        gen = torch.Generator().manual_seed(_step_seed(cfg, t))
        chosen = chosen[torch.randperm(n, generator=gen)[: cfg.max_patches].to(chosen.device)]
    return chosen


def adapt(model: MGCF, images: list[np.ndarray], cfg: AdaptConfig, calibration: int = 0) -> list[Adapted]:
    """Fine-tune adapters for each (H, W, 3) uint8 image, all in one batch; see the module docstring.
    ``calibration``: the scheme the coder will use (``codec.mgcf.calibration``); with one, the loss and
    both estimates are the bits after its corrections (``codec.mgcf.calibration_loss``).

    ``cfg.steps`` is a budget when ``cfg.stop_below`` > 0: fine-tuning stops once every image's
    estimated net gain (the bits its trained patches save, scaled to the whole image, less the
    adapters' bits; from each step's own forward pass, so it costs nothing) grew by less than
    ``stop_below`` of the image's bits over the last ``STOP_PATIENCE`` steps. Each ``Adapted``
    says how many steps ran.

    The model's parameters are frozen (``requires_grad`` off) and it is put in eval mode.
    """
    device = model.head.weight.device
    gpu = device.type == "cuda"
    mixed = gpu if cfg.mixed_passes is None else cfg.mixed_passes
    passes = _Passes(cfg.chunk_patches or (128 if gpu else 16), gpu, mixed)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    first_block = cfg.first_block(model.cfg.depth)
    calibrated = bool(calibration)
    batch = _Batch.of(images, model.cfg.patch, device)
    trunk = _Trunk(model, batch, first_block, passes.amp) if first_block else None
    everything = torch.arange(len(batch.image), device=device)
    with torch.no_grad():
        base = _run(model, None, batch, everything, passes, trunk=trunk, calibrated=calibrated)
    orders = []  # per image, global patch indices in training order
    for i in range(len(images)):
        own = batch.patch_range(i)
        if cfg.order == "random":
            gen = torch.Generator().manual_seed(cfg.seed)
            orders.append(own[torch.randperm(len(own), generator=gen).to(device)])
        else:
            orders.append(own[torch.argsort(base[own], descending=True, stable=True)])
    _sync(device)
    timings["rate_estimate_s"] = time.perf_counter() - start

    start = time.perf_counter()
    adapters = ImageAdapters(model, cfg.spec, len(images))
    optimizer = torch.optim.Adam(adapters.trainable(first_block), lr=cfg.lr)
    image_bits = torch.zeros(len(images), device=device).index_add_(0, batch.image, base)
    gains: list[torch.Tensor] = []  # per step, each image's estimated net gain in bits
    steps_run = 0
    for t in range(cfg.steps):
        optimizer.zero_grad(set_to_none=True)
        which = torch.cat([_selection(t, cfg, order) for order in orders])
        selected = 3 * torch.zeros(len(images), device=device).index_add_(
            0, batch.image[which], batch.mask[which].sum((1, 2)).float()
        )
        bits = _run(
            model, adapters, batch, which, passes, grad_scale=1.0 / selected, trunk=trunk, calibrated=calibrated
        )
        rate = adapters.rate_bits(_step_seed(cfg, t))
        (rate / batch.subpixels).sum().backward()
        optimizer.step()
        steps_run = t + 1
        if cfg.stop_below:
            gains.append(_net_gain(base, bits, which, batch.image, image_bits, rate.detach()))
            if _plateaued(gains, image_bits, cfg.stop_below):
                break
    with torch.no_grad():
        adapted = _run(model, adapters, batch, everything, passes, trunk=trunk, calibrated=calibrated)
    _sync(device)
    timings["fine_tune_s"] = time.perf_counter() - start
    return [
        Adapted(
            adapters.export(i),
            float(base[batch.patch_range(i)].sum()),
            float(adapted[batch.patch_range(i)].sum()),
            dict(timings),
            steps_run,
        )
        for i in range(len(images))
    ]


# Steps over which the gain must grow [choice: the random patch subsets make one step's estimate noisy].
STOP_PATIENCE = 3


def _net_gain(
    base: torch.Tensor,
    bits: torch.Tensor,
    which: torch.Tensor,
    image: torch.Tensor,
    image_bits: torch.Tensor,
    rate: torch.Tensor,
) -> torch.Tensor:
    """Each image's estimated net gain (bits): its trained patches' relative saving (``bits`` of
    ``which`` against their ``base`` bits) applied to the whole image, less its adapters' ``rate``."""
    img = image[which]
    was = torch.zeros_like(image_bits).index_add_(0, img, base[which])
    now = torch.zeros_like(image_bits).index_add_(0, img, bits)
    return (was - now) / was.clamp_min(1.0) * image_bits - rate.to(image_bits.device)


def _plateaued(gains: list[torch.Tensor], image_bits: torch.Tensor, stop_below: float) -> bool:
    """Whether every image's gain grew by less than ``stop_below`` of its bits in ``STOP_PATIENCE`` steps."""
    if len(gains) <= STOP_PATIENCE:
        return False
    return bool(((gains[-1] - gains[-1 - STOP_PATIENCE]) < stop_below * image_bits).all())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
