"""The CCA lossy model in float (training, and the encoder's analysis transform).

y = g_a(x) at 1/16 resolution; z = h_a(y) at 1/64; two hyper-synthesis branches turn z_hat into a
mean prior and a scale prior for y. y is split into uneven slices (``CCAConfig.slice_sizes``) and
each slice's Gaussian mean and scale are predicted from its branch's prior plus every slice
decoded before it; latent residual prediction (LRP) then corrects the slice's reconstruction.
No spatial context: a decoder runs five network steps, not one per position.

Quantization (cca.md): rates use additive uniform noise; the reconstruction path uses
straight-through rounding of y - mu (and of z). At test time both are hard rounding, which is
what ``codec.cca.exact`` reproduces with integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from codec.cca.config import CCAConfig
from codec.cca.factorized import LIKELIHOOD_FLOOR, FactorizedDensity
from codec.cca.layers import NAFBlock, conv, deconv, stage

SCALE_MIN = 0.11  # lower bound of a Gaussian scale (as CompressAI); also the first table scale


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


class _LowerBound(torch.autograd.Function):
    """max(x, bound), passing gradients that would raise x even where it is clamped."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * ((x >= ctx.bound) | (grad < 0)).to(grad.dtype), None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


def gaussian_bits(values: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """-log2 of the probability of the unit bin around ``values`` under N(mean, scale), per element."""
    v = (values - mean).abs()
    s = lower_bound(scale, SCALE_MIN)
    upper = torch.special.ndtr((0.5 - v) / s)
    lower = torch.special.ndtr((-0.5 - v) / s)
    return -torch.log2((upper - lower).clamp_min(LIKELIHOOD_FLOOR))


def head(cin: int, cout: int, cfg: CCAConfig) -> nn.Sequential:
    """Three 3x3 convolutions with GELU between: cin -> context -> context_out -> cout."""
    return nn.Sequential(
        conv(cin, cfg.context, 3),
        nn.GELU(),
        conv(cfg.context, cfg.context_out, 3),
        nn.GELU(),
        conv(cfg.context_out, cout, 3),
    )


class SupportTransform(nn.Module):
    """1x1 into ``context`` channels, NAF-blocks with a long skip, 1x1 back to the support's width."""

    def __init__(self, channels: int, cfg: CCAConfig):
        super().__init__()
        self.inp = nn.Conv2d(channels, cfg.context, 1)
        self.blocks = nn.Sequential(*[NAFBlock(cfg.context) for _ in range(cfg.context_naf)])
        self.out = nn.Conv2d(cfg.context, channels, 1)

    def forward(self, support: torch.Tensor) -> torch.Tensor:
        h = self.inp(support)
        return self.out(self.blocks(h) + h)


class SlicePredictor(nn.Module):
    """Support (a hyper prior plus earlier slices) -> one parameter map of a slice; also returns
    the transformed support, which LRP reuses."""

    def __init__(self, cin: int, cout: int, cfg: CCAConfig):
        super().__init__()
        self.support = SupportTransform(cin, cfg)
        self.head = head(cin, cout, cfg)

    def forward(self, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.support(support)
        return self.head(h), h


class SliceModel(nn.Module):
    """Mean and scale predictors per slice, each seeing the slices listed by ``context_of(i)``.

    The main model sees slices 0..i-1 (``skip = 0``); CCA's auxiliary model sees 0..i-2
    (``skip = 1``), so that the gap between the two measures what the slice just before adds.
    """

    def __init__(self, cfg: CCAConfig, skip: int):
        super().__init__()
        self.cfg, self.skip = cfg, skip
        sizes = cfg.slice_sizes
        self.mean = nn.ModuleList()
        self.scale = nn.ModuleList()
        for i, s in enumerate(sizes):
            cin = cfg.latent + sum(sizes[: self.visible(i)])
            self.mean.append(SlicePredictor(cin, s, cfg))
            self.scale.append(SlicePredictor(cin, s, cfg))

    def visible(self, i: int) -> int:
        """How many earlier slices the predictor of slice i sees."""
        return max(0, i - self.skip)

    def forward(self, i: int, hyper_mean, hyper_scale, decoded: list[torch.Tensor]):
        """Mean, scale and transformed mean support of slice i (from the first ``visible(i)``
        slices of ``decoded``)."""
        earlier = decoded[: self.visible(i)]
        mu, mean_support = self.mean[i](torch.cat([hyper_mean, *earlier], 1))
        sigma, _ = self.scale[i](torch.cat([hyper_scale, *earlier], 1))
        return mu, sigma, mean_support


@dataclass
class Forward:
    """What one training pass produces; bits are sums per image (shape (B,))."""

    x_hat: torch.Tensor
    y: torch.Tensor
    y_slices: list[torch.Tensor]
    y_noisy: list[torch.Tensor]  # y plus the uniform noise its rate was measured at, per slice
    y_hat: list[torch.Tensor]  # rounded and LRP-corrected: what later slices and g_s see
    hyper_mean: torch.Tensor
    hyper_scale: torch.Tensor
    y_bits: torch.Tensor
    z_bits: torch.Tensor


class CCAModel(nn.Module):
    def __init__(self, cfg: CCAConfig):
        super().__init__()
        self.cfg = cfg
        w, r, n = cfg.widths, cfg.res_blocks, cfg.naf_blocks
        self.g_a = nn.Sequential(
            conv(3, w[0], 5, 2),
            stage(w[0], r, n, naf_first=False),
            conv(w[0], w[1], 5, 2),
            stage(w[1], r, n, naf_first=False),
            conv(w[1], w[2], 5, 2),
            stage(w[2], r, n, naf_first=False),
            conv(w[2], w[3], 5, 2),
        )
        self.g_s = nn.Sequential(
            deconv(w[3], w[2]),
            stage(w[2], r, n, naf_first=True),
            deconv(w[2], w[1]),
            stage(w[1], r, n, naf_first=True),
            deconv(w[1], w[0]),
            stage(w[0], r, n, naf_first=True),
            deconv(w[0], 3),
        )
        h, m = cfg.hyper, cfg.latent
        self.h_a = nn.Sequential(conv(m, h, 3), nn.GELU(), conv(h, h, 5, 2), nn.GELU(), conv(h, cfg.z_channels, 5, 2))

        def h_s() -> nn.Sequential:
            return nn.Sequential(deconv(cfg.z_channels, h), nn.GELU(), deconv(h, h), nn.GELU(), conv(h, m, 3))

        self.h_s_mean, self.h_s_scale = h_s(), h_s()
        self.z_density = FactorizedDensity(cfg.z_channels, cfg.factorized_filters)
        self.slices = SliceModel(cfg, skip=0)
        sizes = cfg.slice_sizes
        # LRP: [transformed mean support, y_hat_i] -> a correction of y_hat_i, bounded by 0.5 * tanh.
        self.lrp = nn.ModuleList(head(m + sum(sizes[: i + 1]), s, cfg) for i, s in enumerate(sizes))

    def split(self, y: torch.Tensor) -> list[torch.Tensor]:
        return list(y.split(self.cfg.slice_sizes, dim=1))

    def hyper(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.h_s_mean(z_hat), self.h_s_scale(z_hat)

    def forward(self, x: torch.Tensor) -> Forward:
        """Training pass on x in [0, 1], (B, 3, H, W) with H and W multiples of 64."""
        y = self.g_a(x)
        z = self.h_a(y)
        z_bits = -torch.log2(self.z_density.likelihood(self._rate_point(z, 0)))
        hyper_mean, hyper_scale = self.hyper(round_ste(z))
        y_slices = self.split(y)
        noisy: list[torch.Tensor] = []
        decoded: list[torch.Tensor] = []
        y_bits = []
        for i, y_i in enumerate(y_slices):
            mu, sigma, support = self.slices(i, hyper_mean, hyper_scale, decoded)
            noisy.append(self._rate_point(y_i, mu))
            y_bits.append(gaussian_bits(noisy[-1], mu, sigma).sum((1, 2, 3)))
            y_hat = round_ste(y_i - mu) + mu
            decoded.append(y_hat + 0.5 * torch.tanh(self.lrp[i](torch.cat([support, y_hat], 1))))
        x_hat = self.g_s(torch.cat(decoded, 1))
        return Forward(
            x_hat,
            y,
            y_slices,
            noisy,
            decoded,
            hyper_mean,
            hyper_scale,
            torch.stack(y_bits).sum(0),
            z_bits.sum((1, 2, 3)),
        )

    def _rate_point(self, v: torch.Tensor, mean) -> torch.Tensor:
        """Where a rate is measured: v plus uniform noise in training, the coded value in eval."""
        if self.training:
            return v + torch.empty_like(v).uniform_(-0.5, 0.5)
        return torch.round(v - mean) + mean


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pad_to(x: torch.Tensor, multiple: int = 64) -> torch.Tensor:
    """Replicate-pad H and W up to a multiple of ``multiple`` (the transforms' total stride)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
