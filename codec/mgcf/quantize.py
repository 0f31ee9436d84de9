"""Float MGCF -> the integer tensors of its exact twin (``codec.mgcf.exact``).

Quantizing is rounding after a power-of-two scaling, so the same float weights give the same
integers on every machine. Masked kernels are stored as their visible taps only: the exact path
never multiplies by a masked-out weight.
"""

from __future__ import annotations

import torch

from codec.fixedpoint import check_bounds, quantize_bias, quantize_weight
from codec.mgcf.model import MGCF
from codec.mgcf.wavefront import kernel_offsets


def _taps(weight: torch.Tensor, strict: bool) -> torch.Tensor:
    """Conv weight (out, in, k, k) -> (taps * in, out), tap-major, visible taps only."""
    k = weight.shape[-1]
    r = k // 2
    rows = [weight[:, :, dr + r, dc + r].T for dr, dc in kernel_offsets(k, strict)]  # each (in, out)
    return torch.cat(rows, dim=0)


def _linear(prefix: str, layer: torch.nn.Linear, out: dict[str, torch.Tensor]) -> None:
    w = quantize_weight(layer.weight.T)  # (in, out): activations multiply from the left
    b = quantize_bias(layer.bias)
    check_bounds(w, b, (0,))
    out[prefix + ".weight"] = w
    out[prefix + ".bias"] = b


def _norm(prefix: str, layer: torch.nn.LayerNorm, out: dict[str, torch.Tensor]) -> None:
    out[prefix + ".weight"] = quantize_weight(layer.weight)
    out[prefix + ".bias"] = quantize_bias(layer.bias)


def exact_tensors(model: MGCF) -> dict[str, torch.Tensor]:
    """Integer-valued float64 tensors for every layer of ``model``."""
    out: dict[str, torch.Tensor] = {}
    w = quantize_weight(_taps(model.embed.weight, strict=True))
    b = quantize_bias(model.embed.bias)
    check_bounds(w, b, (0,))
    out["embed.weight"], out["embed.bias"] = w, b
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}."
        _norm(p + "norm1", block.norm1, out)
        _linear(p + "gate_a", block.gate_a, out)
        _linear(p + "gate_v", block.gate_v, out)
        _linear(p + "gate_o", block.gate_o, out)
        w = quantize_weight(_taps(block.dw.weight, strict=False))  # (taps * 1, C)
        b = quantize_bias(block.dw.bias)
        check_bounds(w, b, (0,))
        out[p + "dw.weight"], out[p + "dw.bias"] = w, b
        _norm(p + "norm2", block.norm2, out)
        _linear(p + "fc1", block.fc1, out)
        _linear(p + "fc2", block.fc2, out)
    _linear("head", model.head, out)
    return out
