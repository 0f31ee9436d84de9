"""Building blocks of the CCA transforms: residual bottlenecks and NAF-blocks (NAFNet).

Every nonlinearity here is one the exact path can reproduce with integers: ReLU, GELU (a stored
table), products of two activations (SimpleGate, channel attention) and a channel layer norm.
"""

from __future__ import annotations

import torch
from torch import nn


def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def deconv(cin: int, cout: int, k: int = 5) -> nn.ConvTranspose2d:
    """Stride-2 transposed convolution that exactly doubles height and width."""
    return nn.ConvTranspose2d(cin, cout, k, stride=2, padding=k // 2, output_padding=1)


class LayerNorm2d(nn.Module):
    """Layer norm over the channels at each position (NAFNet's LayerNorm2d)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + self.eps).sqrt()
        return y * self.weight[:, None, None] + self.bias[:, None, None]


def simple_gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return a * b


class NAFBlock(nn.Module):
    """NAFNet's block: gated depth-wise mixing with channel attention, then a gated MLP; both
    residual branches scaled by learnable per-channel factors that start at zero."""

    def __init__(self, d: int):
        super().__init__()
        self.norm1 = LayerNorm2d(d)
        self.expand = nn.Conv2d(d, 2 * d, 1)
        self.dw = nn.Conv2d(2 * d, 2 * d, 3, padding=1, groups=2 * d)
        self.sca = nn.Conv2d(d, d, 1)
        self.project = nn.Conv2d(d, d, 1)
        self.beta = nn.Parameter(torch.zeros(1, d, 1, 1))
        self.norm2 = LayerNorm2d(d)
        self.fc1 = nn.Conv2d(d, 2 * d, 1)
        self.fc2 = nn.Conv2d(d, d, 1)
        self.gamma = nn.Parameter(torch.zeros(1, d, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = simple_gate(self.dw(self.expand(self.norm1(x))))
        h = h * self.sca(h.mean((2, 3), keepdim=True))
        x = x + self.beta * self.project(h)
        return x + self.gamma * self.fc2(simple_gate(self.fc1(self.norm2(x))))


class ResBottleneck(nn.Module):
    """1x1 C -> C/2, ReLU, 3x3, ReLU, 1x1 C/2 -> C, plus the identity."""

    def __init__(self, c: int):
        super().__init__()
        h = max(1, c // 2)
        self.reduce = nn.Conv2d(c, h, 1)
        self.mix = nn.Conv2d(h, h, 3, padding=1)
        self.restore = nn.Conv2d(h, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.restore(torch.relu(self.mix(torch.relu(self.reduce(x)))))


def stage(c: int, res_blocks: int, naf_blocks: int, naf_first: bool) -> nn.Sequential:
    """The blocks between two resolution changes: g_a puts residual blocks first, g_s NAF-blocks."""
    res = [ResBottleneck(c) for _ in range(res_blocks)]
    naf = [NAFBlock(c) for _ in range(naf_blocks)]
    return nn.Sequential(*(naf + res if naf_first else res + naf))
