"""The exact (integer) half of the CCA codec: everything a decoder computes.

The decoder recomputes the entropy parameters (hyper synthesis, each slice's mean and scale from
the slices before it) and the reconstruction (LRP, g_s). In float, one ulp of difference between
the encoder's machine and the decoder's breaks decoding silently (determinism.md), and g_s in float
would give slightly different pixels on another machine. So all of it runs on integers, exactly as
the lossless path does (``codec.fixedpoint``): weights at 16 fractional bits, activations at 12,
float64 tensors holding integers below 2**53 (exact in any summation order, on any device),
GELU and tanh from tables stored with the model. The same file gives the same pixels everywhere,
and the pixel hash in the file can be checked.

Only the analysis side (g_a, h_a) stays in float: it runs on the encoder alone, and whatever y
it produces, the file holds the integers that were coded.

Convolutions are ``torch`` convolutions on float64 with cuDNN off (oneDNN has no float64
kernels): their direct and im2col kernels only multiply and add, which is exact here, whereas FFT
or Winograd kernels would round.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from codec.cca.config import CCAConfig
from codec.cca.layers import LayerNorm2d, NAFBlock
from codec.cca.model import CCAModel
from codec.fixedpoint import (
    ACT_FRAC,
    ACT_LIMIT,
    TANH_LUT_RANGE,
    activation,
    check_bounds,
    layer_norm,
    lut_lookup,
    quantize_bias,
    quantize_weight,
    requantize,
)

ONE = 1 << ACT_FRAC


def exact_tensors(model: CCAModel) -> dict[str, torch.Tensor]:
    """Integer-valued float64 tensors for every parameter the decoder uses (not g_a, h_a, z_density)."""
    out: dict[str, torch.Tensor] = {}
    decoder_side = ("g_s.", "h_s_mean.", "h_s_scale.", "slices.", "lrp.")
    for name, module in model.named_modules():
        if not name.startswith(decoder_side):
            continue
        if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            w, b = quantize_weight(module.weight), quantize_bias(module.bias)
            fan_in = (1, 2, 3) if isinstance(module, torch.nn.Conv2d) else (0, 2, 3)
            check_bounds(w, b, fan_in)
            out[name + ".weight"], out[name + ".bias"] = w, b
        elif isinstance(module, LayerNorm2d):
            out[name + ".weight"], out[name + ".bias"] = quantize_weight(module.weight), quantize_bias(module.bias)
        elif isinstance(module, NAFBlock):
            out[name + ".beta"] = quantize_weight(module.beta.reshape(-1))
            out[name + ".gamma"] = quantize_weight(module.gamma.reshape(-1))
    return out


@contextlib.contextmanager
def exact_kernels():
    """Plain multiply-add convolution kernels only (no cuDNN algorithm choice)."""
    with torch.backends.cudnn.flags(enabled=False):
        yield


def _mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Product of two activations, back at activation scale."""
    return requantize(a * b, ACT_FRAC)


class ExactCCA:
    """The decoder-side networks on integers. Tensors are (B, C, H, W) float64 holding integers
    at ``ACT_FRAC`` fractional bits."""

    def __init__(
        self,
        cfg: CCAConfig,
        tensors: dict[str, torch.Tensor],
        luts: dict[str, torch.Tensor],
        device: str | torch.device = "cpu",
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        self.t = {k: v.to(self.device, torch.float64) for k, v in tensors.items()}
        self.luts = {k: v.to(self.device, torch.float64) for k, v in luts.items()}

    # ---- layers ----
    def conv(self, name: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        w = self.t[name + ".weight"]
        acc = F.conv2d(x, w, None, stride=stride, padding=w.shape[-1] // 2, groups=x.shape[1] // w.shape[1])
        return requantize(acc.add_(self.t[name + ".bias"][:, None, None]))

    def deconv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        w = self.t[name + ".weight"]
        k = w.shape[-1]
        acc = F.conv_transpose2d(x, w, None, stride=2, padding=k // 2, output_padding=1)
        return requantize(acc.add_(self.t[name + ".bias"][:, None, None]))

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        return activation(x, self.luts["gelu"])

    def norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 3, 1)
        y = layer_norm(rows, self.t[name + ".weight"], self.t[name + ".bias"])
        return y.permute(0, 3, 1, 2)

    def scaled(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x times a per-channel factor stored at weight scale (NAF's beta and gamma)."""
        return requantize(x * self.t[name][:, None, None])

    def naf(self, p: str, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(p + "dw", self.conv(p + "expand", self.norm(p + "norm1", x)))
        a, b = h.chunk(2, dim=1)
        h = _mul(a, b)
        pooled = torch.div(h.sum((2, 3), keepdim=True).long(), h.shape[2] * h.shape[3], rounding_mode="floor")
        h = _mul(h, self.conv(p + "sca", pooled.double()))
        x = (x + self.scaled(self.conv(p + "project", h), p + "beta")).clamp_(-ACT_LIMIT, ACT_LIMIT)
        a, b = self.conv(p + "fc1", self.norm(p + "norm2", x)).chunk(2, dim=1)
        return (x + self.scaled(self.conv(p + "fc2", _mul(a, b)), p + "gamma")).clamp_(-ACT_LIMIT, ACT_LIMIT)

    def res(self, p: str, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(p + "reduce", x).clamp_(min=0)
        h = self.conv(p + "mix", h).clamp_(min=0)
        return (x + self.conv(p + "restore", h)).clamp_(-ACT_LIMIT, ACT_LIMIT)

    def stage(self, p: str, x: torch.Tensor, naf_first: bool) -> torch.Tensor:
        kinds = ["naf"] * self.cfg.naf_blocks + ["res"] * self.cfg.res_blocks
        for j, kind in enumerate(kinds if naf_first else kinds[::-1]):
            x = self.naf(f"{p}.{j}.", x) if kind == "naf" else self.res(f"{p}.{j}.", x)
        return x

    def head(self, p: str, x: torch.Tensor) -> torch.Tensor:
        return self.conv(p + ".4", self.gelu(self.conv(p + ".2", self.gelu(self.conv(p + ".0", x)))))

    # ---- the decoder's networks ----
    def hyper(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z symbols (integers) -> the mean and scale priors of y."""
        z = z_hat * ONE
        out = []
        for p in ("h_s_mean", "h_s_scale"):
            h = self.gelu(self.deconv(p + ".0", z))
            h = self.gelu(self.deconv(p + ".2", h))
            out.append(self.conv(p + ".4", h))
        return out[0], out[1]

    def slice_params(self, i: int, hyper_mean, hyper_scale, decoded: list[torch.Tensor]):
        """Mean, scale and transformed mean support of slice i, from every earlier decoded slice."""
        result = []
        for branch, prior in (("mean", hyper_mean), ("scale", hyper_scale)):
            p = f"slices.{branch}.{i}."
            x = torch.cat([prior, *decoded[:i]], 1)
            h = self.conv(p + "support.inp", x)
            g = h
            for j in range(self.cfg.context_naf):
                g = self.naf(f"{p}support.blocks.{j}.", g)
            support = self.conv(p + "support.out", (g + h).clamp_(-ACT_LIMIT, ACT_LIMIT))
            result += [self.head(p + "head", support), support]
        mu, mean_support, sigma, _ = result
        return mu, sigma, mean_support

    def lrp(self, i: int, support: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """y_hat_i + 0.5 tanh(lrp(...)), the tanh from its table (output at 2**-12), halved by a floor."""
        t = self.head(f"lrp.{i}", torch.cat([support, y_hat], 1))
        lim = TANH_LUT_RANGE * ONE
        tanh = lut_lookup(t, self.luts["tanh"], -lim, lim)
        return (y_hat + torch.floor(tanh * 0.5)).clamp_(-ACT_LIMIT, ACT_LIMIT)

    def synthesize(self, y_hat: torch.Tensor) -> torch.Tensor:
        """y_hat (activation units) -> 8-bit pixels (B, H, W, 3) as uint8, exactly."""
        x = y_hat
        for s in range(3):
            x = self.deconv(f"g_s.{2 * s}", x)
            x = self.stage(f"g_s.{2 * s + 1}", x, naf_first=True)
        x = self.deconv("g_s.6", x).long()
        pixels = torch.div(x * 255 + ONE // 2, ONE, rounding_mode="floor").clamp_(0, 255)
        return pixels.to(torch.uint8).permute(0, 2, 3, 1)
