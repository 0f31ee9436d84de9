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
them on the positions being decoded only (Cache then Crop Inference, ``codec.mgcf.exact``).
Activations are kept channels-last so that pointwise layers are plain ``nn.Linear``.
This float model is what training and per-image fine-tuning use; coding never runs it: it runs
its integer twin built by ``codec.mgcf.quantize``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codec.mgcf.config import MGCFConfig
from codec.mgcf.wavefront import kernel_mask, kernel_offsets

PIXEL_CENTER = 128.0
PIXEL_SCALE = 64.0


def visible_rows(kernel: int, strict: bool) -> int:
    """How many leading rows of a masked kernel hold a visible tap: the wavefront hides every row
    below (from the offsets, not the mask tensor, which may be on the meta device)."""
    return max(dr for dr, _ in kernel_offsets(kernel, strict)) + kernel // 2 + 1


class _MaskedDepthwise(torch.autograd.Function):
    """A depth-wise convolution (padding k // 2) whose kernel rows from ``rows`` on are zero, as a
    convolution of the visible rows only, with its own backward.

    Why (CPU): the non-strict 7x7 wavefront mask leaves 5 of 7 rows, so the cropped kernel does
    5/7 of the work; and oneDNN's weight gradient of a 7x7 depth-wise convolution (a generic,
    non-depth-wise kernel) took 137 ms of a 179 ms backward (batch 8 of 64x64, 128 channels, 1
    thread), while depth-wise convolutions of x with the output gradient as their kernel
    (``_kernel_gradient``) take about half. The whole training step, paper configuration, 1
    thread, is 1.07x faster at 8 x 64x64 and 1.15x at 4 x 128x128 (``bench/train_speed.py``,
    base against ``dw-plain``, interleaved). The function is the same: the rows dropped are zero
    (the forward gave bit-identical outputs here), the gradients differ only in float rounding.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None, rows: int) -> torch.Tensor:
        visible = kernel[:, :, :rows]
        ctx.save_for_backward(x, visible)
        ctx.rows = rows
        r = kernel.shape[-1] // 2
        # Output row t of the padded convolution is centred on input row t; rows H, H+1... would
        # be centred below the image, so they are cut.
        return F.conv2d(x, visible, bias, padding=r, groups=x.shape[1])[:, :, : x.shape[2]]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, visible = ctx.saved_tensors
        rows, (_, c, h, _), k = ctx.rows, x.shape, visible.shape[-1]
        r = k // 2
        grad_x = grad_kernel = grad_bias = None
        if ctx.needs_input_grad[0]:
            # The transposed convolution: the flipped kernel; its output is shifted by 2r + 1 - rows rows.
            shift = 2 * r + 1 - rows
            grad_x = F.conv2d(grad, visible.flip(2, 3), padding=r, groups=c)[:, :, shift : shift + h]
        if ctx.needs_input_grad[1]:
            grad_kernel = x.new_zeros(c, 1, k, k)
            grad_kernel[:, :, :rows] = _kernel_gradient(x, grad, r, rows)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_kernel, grad_bias, None


# oneDNN's depth-wise convolution with a large kernel ran fastest at about 4096 kernel positions
# (1 thread, weight gradient of 128 channels: 8 samples of 64x64 66 ms as one 64x64 kernel each;
# 2 samples of 128x128 137 ms as one 128x128 kernel each, 63 ms as 32x128 bands).
_BAND_POSITIONS = 4096


def _kernel_gradient(x: torch.Tensor, grad: torch.Tensor, r: int, rows: int) -> torch.Tensor:
    """(C, 1, rows, 2r+1): d kernel[c, i, j] = sum over samples and positions of grad * x shifted by
    (i - r, j - r), for the first ``rows`` kernel rows. Per sample and band of rows, a depth-wise
    convolution of x with the gradient as its kernel."""
    b, c, h, w = x.shape
    band = max(1, min(h, _BAND_POSITIONS // w))
    padded = F.pad(x, (0, 0, r, r))
    parts = []
    for s in range(b):
        for top in range(0, h, band):
            n = min(band, h - top)
            window = padded[s : s + 1, :, top : top + n + rows - 1]
            parts.append(F.conv2d(window, grad[s, :, top : top + n].unsqueeze(1), padding=(0, r), groups=c))
    return torch.stack(parts).sum(0).transpose(0, 1)


def masked_depthwise(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None, rows: int) -> torch.Tensor:
    """``F.conv2d(x, kernel, bias, padding=k // 2, groups=C)`` for a (C, 1, k, k) ``kernel`` whose rows
    from ``rows`` on are zero. On a CPU without autocast, ``_MaskedDepthwise`` (faster there); else
    ``F.conv2d`` (cuDNN's backward is good, and autocast would hand the backward mixed dtypes)."""
    if x.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
        return _MaskedDepthwise.apply(x, kernel, bias, rows)
    return F.conv2d(x, kernel, bias, padding=kernel.shape[-1] // 2, groups=x.shape[1])


class MaskedConv2d(nn.Conv2d):
    """Conv2d whose kernel is multiplied by a wavefront mask (see ``codec.mgcf.wavefront``)."""

    def __init__(self, cin: int, cout: int, kernel: int, strict: bool, groups: int = 1):
        super().__init__(cin, cout, kernel, padding=kernel // 2, groups=groups)
        self.register_buffer("mask", kernel_mask(kernel, strict), persistent=False)
        self.rows = visible_rows(kernel, strict)
        self.depthwise = groups == cin == cout

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """``delta``: per-sample additions to a depth-wise kernel, (B, C, 1, k, k), or one addition
        for the whole batch, (1, C, 1, k, k); masked like the kernel."""
        if delta is None or delta.shape[0] == 1:
            weight = self.weight if delta is None else self.weight + delta[0]
            if self.depthwise:
                return masked_depthwise(x, weight * self.mask, self.bias, self.rows)
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
        """``deltas``: per-sample adapter updates by layer name (``codec.mgcf.rpft``), or None."""
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
        return self.tail(self.trunk(pixels, 0), 0, deltas)

    def trunk(self, pixels: torch.Tensor, blocks: int, deltas: Deltas | None = None) -> torch.Tensor:
        """The embedding and the first ``blocks`` blocks: features (B, H, W, C). Split from
        ``tail`` so that per-image fine-tuning of the later layers only (``codec.mgcf.rpft``) can
        compute the frozen ones once."""
        x = (pixels.to(self.head.weight.dtype) - PIXEL_CENTER) / PIXEL_SCALE
        x = self.embed(x).permute(0, 2, 3, 1)
        for block in self.blocks[:blocks]:
            x = block(x, deltas)
        return x

    def tail(self, x: torch.Tensor, first: int, deltas: Deltas | None = None) -> torch.Tensor:
        """Blocks ``first..`` and the head, on ``trunk(pixels, first)``: mixture parameters."""
        for block in self.blocks[first:]:
            x = block(x, deltas)
        return linear(self.head, x, (deltas or {}).get("head"))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
