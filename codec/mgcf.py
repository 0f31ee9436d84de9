"""MGCF, the Masked Gated ConvFormer of CALLIC (sections 1-2), in float for training.

::

    pixels (B,3,H,W) uint8
      -> (v - 128) / 64
      -> masked 3x3 conv, strict (sees earlier groups only)       3 -> C
      -> depth x Block:
             x += W_O( SiLU(maskedDW_kxk(W_A LN(x))) * W_V LN(x) )  masked convolutional gating
             x += fc2( GELU( fc1( LN(x) ) ) )                      MLP, C -> 4C -> C
      -> 1x1 head                                                  C -> 10K mixture parameters

Everything except the two masked convolutions is pointwise, which is what lets the decoder run
them on the positions being decoded only (Cache then Crop Inference, ``codec.exact``).
Activations are kept channels-last so that pointwise layers are plain ``nn.Linear``.
This float model is what training and per-image fine-tuning use; coding never runs it: it runs
its integer twin built by ``codec.quantize``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codec.config import MGCFConfig
from codec.wavefront import kernel_mask

PIXEL_CENTER = 128.0
PIXEL_SCALE = 64.0


class MaskedConv2d(nn.Conv2d):
    """Conv2d whose kernel is multiplied by a wavefront mask (see ``codec.wavefront``)."""

    def __init__(self, cin: int, cout: int, kernel: int, strict: bool, groups: int = 1):
        super().__init__(cin, cout, kernel, padding=kernel // 2, groups=groups)
        self.register_buffer("mask", kernel_mask(kernel, strict), persistent=False)

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """``delta``: per-sample additions to a depth-wise kernel, (B, C, 1, k, k), or one addition
        for the whole batch, (1, C, 1, k, k); masked like the kernel."""
        if delta is None or delta.shape[0] == 1:
            weight = self.weight if delta is None else self.weight + delta[0]
            return F.conv2d(x, weight * self.mask, self.bias, padding=self.padding, groups=self.groups)
        # One grouped conv over the batch folded into channels: every sample gets its own kernel.
        b, c, h, w = x.shape
        kernel = ((self.weight + delta) * self.mask).reshape(b * c, 1, *self.kernel_size)
        out = F.conv2d(x.reshape(1, b * c, h, w), kernel, self.bias.repeat(b), padding=self.padding, groups=b * c)
        return out.view(b, c, h, w)


Deltas = dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]


def linear(layer: nn.Linear, x: torch.Tensor, lora: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """``layer(x)`` plus a per-sample low-rank update ``x @ down @ up``; down (B, in, r), up (B, r, out),
    or one update for the whole batch (leading dimension 1), merged into the weight: on a CPU that is
    about twice as fast as the per-sample products, whose rank-r matrix products are memory-bound."""
    if lora is not None and lora[0].shape[0] == 1:
        return F.linear(x, layer.weight + (lora[0][0] @ lora[1][0]).T, layer.bias)
    y = layer(x)
    if lora is None:
        return y
    down, up = lora
    rows = x.reshape(x.shape[0], -1, x.shape[-1])
    return y + torch.bmm(torch.bmm(rows, down), up).view(y.shape)


class Block(nn.Module):
    """MetaFormer block with masked convolutional gating in place of attention."""

    def __init__(self, cfg: MGCFConfig, name: str):
        super().__init__()
        self.name = name
        c = cfg.width
        self.norm1 = nn.LayerNorm(c)
        self.gate_a = nn.Linear(c, c)
        self.gate_v = nn.Linear(c, c)
        self.gate_o = nn.Linear(c, c)
        self.dw = MaskedConv2d(c, c, cfg.kernel, strict=False, groups=c)
        self.norm2 = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, c * cfg.mlp_ratio)
        self.fc2 = nn.Linear(c * cfg.mlp_ratio, c)

    def forward(self, x: torch.Tensor, deltas: Deltas | None = None) -> torch.Tensor:
        """``deltas``: per-sample adapter updates by layer name (``codec.rpft``), or None."""
        d = deltas or {}
        p = self.name + "."
        h = self.norm1(x)
        a = linear(self.gate_a, h, d.get(p + "gate_a")).permute(0, 3, 1, 2)
        a = self.dw(a, d.get(p + "dw")).permute(0, 2, 3, 1)
        x = x + linear(self.gate_o, F.silu(a) * linear(self.gate_v, h, d.get(p + "gate_v")), d.get(p + "gate_o"))
        u = F.gelu(linear(self.fc1, self.norm2(x), d.get(p + "fc1")))
        return x + linear(self.fc2, u, d.get(p + "fc2"))


class MGCF(nn.Module):
    def __init__(self, cfg: MGCFConfig | None = None):
        super().__init__()
        self.cfg = cfg or MGCFConfig()
        self.embed = MaskedConv2d(3, self.cfg.width, 3, strict=True)
        self.blocks = nn.ModuleList(Block(self.cfg, f"blocks.{i}") for i in range(self.cfg.depth))
        self.head = nn.Linear(self.cfg.width, self.cfg.head_channels)
        with torch.no_grad():  # start from broad, centred predictions (~8 bpsp, not ~50)
            k = self.cfg.mixtures
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            self.head.bias[4 * k : 7 * k] = 2.0  # log-scales: logistic scale e^2 ~ 7 pixels

    def forward(self, pixels: torch.Tensor, deltas: Deltas | None = None) -> torch.Tensor:
        """Pixels (B, 3, H, W), values 0..255 -> mixture parameters (B, H, W, 10K).

        H and W are one patch (or a batch of patches): context never crosses a patch border.
        ``deltas``: per-sample adapter updates (per-image fine-tuning), by layer name.
        """
        x = (pixels.to(self.head.weight.dtype) - PIXEL_CENTER) / PIXEL_SCALE
        x = self.embed(x).permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x, deltas)
        return linear(self.head, x, (deltas or {}).get("head"))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
