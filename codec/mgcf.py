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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding, groups=self.groups)


class Block(nn.Module):
    """MetaFormer block with masked convolutional gating in place of attention."""

    def __init__(self, cfg: MGCFConfig):
        super().__init__()
        c = cfg.width
        self.norm1 = nn.LayerNorm(c)
        self.gate_a = nn.Linear(c, c)
        self.gate_v = nn.Linear(c, c)
        self.gate_o = nn.Linear(c, c)
        self.dw = MaskedConv2d(c, c, cfg.kernel, strict=False, groups=c)
        self.norm2 = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, c * cfg.mlp_ratio)
        self.fc2 = nn.Linear(c * cfg.mlp_ratio, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        a = self.dw(self.gate_a(h).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.gate_o(F.silu(a) * self.gate_v(h))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class MGCF(nn.Module):
    def __init__(self, cfg: MGCFConfig | None = None):
        super().__init__()
        self.cfg = cfg or MGCFConfig()
        self.embed = MaskedConv2d(3, self.cfg.width, 3, strict=True)
        self.blocks = nn.ModuleList(Block(self.cfg) for _ in range(self.cfg.depth))
        self.head = nn.Linear(self.cfg.width, self.cfg.head_channels)
        with torch.no_grad():  # start from broad, centred predictions (~8 bpsp, not ~50)
            k = self.cfg.mixtures
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            self.head.bias[4 * k : 7 * k] = 2.0  # log-scales: logistic scale e^2 ~ 7 pixels

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W), values 0..255 -> mixture parameters (B, H, W, 10K).

        H and W are one patch (or a batch of patches): context never crosses a patch border.
        """
        x = (pixels.to(self.head.weight.dtype) - PIXEL_CENTER) / PIXEL_SCALE
        x = self.embed(x).permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
