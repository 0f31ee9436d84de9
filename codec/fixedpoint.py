"""Exact fixed-point arithmetic for the coding path (determinism.md, "What follows").

Every tensor on the exact path holds integers. They are stored as float64 so that matrix products
run on ordinary BLAS / cuBLAS kernels, and that is exact: every product and every partial sum is
an integer below 2**53 (guaranteed by the clamps below and by ``check_bounds`` on the weights), so
no rounding ever happens, whatever the summation order, FMA use, thread count or device.
Divisions and square roots are done in int64, which is exact on every device. Nonlinearities are
lookup tables that are computed once, stored in the model file, and never recomputed with
platform math when coding.

Units (format version 1; changing any of these is a new format version):

- activations: ``ACT_FRAC`` = 12 fractional bits, clamped to +-``ACT_LIMIT`` (+-1024.0)
- weights: ``WEIGHT_FRAC`` = 16 fractional bits; biases at 12 + 16 bits (the accumulator's unit)
- pixels enter as ``(v - 128) / 64``, i.e. ``(v - 128) * 64`` in activation units
"""

from __future__ import annotations

import math

import torch

ACT_FRAC = 12
WEIGHT_FRAC = 16
ACC_FRAC = ACT_FRAC + WEIGHT_FRAC
ACT_LIMIT = 2**22 - 1
EXACT_LIMIT = 2**53

# Lookup-table domains, in real units; inputs are clamped to them.
ACT_LUT_RANGE = 16  # SiLU and GELU: identity above, zero below
EXP_LUT_RANGE = 12  # exp on [-12, 0], output scaled by 2**12
TANH_LUT_RANGE = 8  # tanh on [-8, 8], output scaled by 2**12
INV_SCALE_FRAC = 20  # exp(-log_scale), output scaled by 2**20
SIGMOID_LUT_RANGE = 20  # sigmoid on [-20, 20] in steps of 2**-12, output scaled by 2**24
SIGMOID_FRAC = 24


def _grid(lo: float, hi: float) -> torch.Tensor:
    """Real values lo..hi in steps of 2**-ACT_FRAC, in float64."""
    n = round((hi - lo) * 2**ACT_FRAC)
    return lo + torch.arange(n + 1, dtype=torch.float64) / 2**ACT_FRAC


def build_luts(log_scale_min: float, log_scale_max: float) -> dict[str, torch.Tensor]:
    """All lookup tables of the exact path, as int64.

    Computed with platform math (which may differ in the last ulp between machines), then stored
    with the model; a decoder uses the stored tables, never its own.
    """
    one = 2**ACT_FRAC
    x = _grid(-ACT_LUT_RANGE, ACT_LUT_RANGE)
    silu = x * torch.sigmoid(x)
    gelu = 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    e = _grid(-EXP_LUT_RANGE, 0)
    t = _grid(-TANH_LUT_RANGE, TANH_LUT_RANGE)
    ls = _grid(log_scale_min, log_scale_max)
    z = _grid(-SIGMOID_LUT_RANGE, SIGMOID_LUT_RANGE)
    luts = {
        "silu": torch.round(silu * one).long(),
        "gelu": torch.round(gelu * one).long(),
        "exp": torch.round(torch.exp(e) * one).long(),
        "tanh": torch.round(torch.tanh(t) * one).long(),
        "inv_scale": torch.round(torch.exp(-ls) * 2**INV_SCALE_FRAC).long(),
        "sigmoid": torch.round(torch.sigmoid(z) * 2**SIGMOID_FRAC).long(),
    }
    for name in ("silu", "gelu"):
        if luts[name][0] != 0 or luts[name][-1] != ACT_LUT_RANGE * one:
            raise AssertionError(f"{name} table must run from 0 to {ACT_LUT_RANGE}")
    return luts


def quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """Float weight -> integer at WEIGHT_FRAC bits (scaling by a power of two is exact)."""
    return torch.round(w.detach().double() * 2**WEIGHT_FRAC)


def quantize_bias(b: torch.Tensor) -> torch.Tensor:
    """Float bias -> integer in accumulator units (ACT_FRAC + WEIGHT_FRAC bits)."""
    return torch.round(b.detach().double() * 2**ACC_FRAC)


def check_bounds(weight: torch.Tensor, bias: torch.Tensor | None, fan_in_dims: tuple[int, ...]) -> None:
    """Refuse weights whose worst-case accumulator could reach 2**53 (and stop being exact)."""
    worst = weight.abs().sum(dim=fan_in_dims) * (ACT_LIMIT + 1)
    if bias is not None:
        worst = worst + bias.abs()
    if float(worst.max()) >= EXACT_LIMIT:
        raise ValueError("weights too large for the exact path (accumulator could exceed 2**53)")


def requantize(acc: torch.Tensor, shift: int = WEIGHT_FRAC) -> torch.Tensor:
    """Round an accumulator down by ``shift`` bits (half up) and clamp to the activation range.

    Multiplying by 2**-shift is exact in float64, and so is floor.
    Works in place: ``acc`` is consumed.
    """
    return acc.add_(2.0 ** (shift - 1)).mul_(2.0**-shift).floor_().clamp_(-ACT_LIMIT, ACT_LIMIT)


def lut_lookup(x: torch.Tensor, table: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``table[clamp(x, lo, hi) - lo]`` for integer-valued ``x``; table index 0 is input ``lo``."""
    return table[(x.clamp(lo, hi) - lo).long()]


def activation(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """SiLU or GELU from its table, continued as the identity above the table's range.

    Both tables end at exactly ``limit`` (silu(16) and gelu(16) round to 16.0) and start at 0, so
    ``table[clamp(x)] + max(x - limit, 0)`` is x above the range and 0 below it.
    """
    limit = ACT_LUT_RANGE * 2**ACT_FRAC
    y = table[(x.clamp(-limit, limit) + limit).long()]
    return y.add_((x - limit).clamp_(min=0))


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """Exact floor(sqrt(n)) for int64 0 <= n < 2**62: a float guess, then integer corrections."""
    s = torch.sqrt(n.double()).floor().long()
    for _ in range(2):
        s = torch.where(s * s > n, s - 1, s)
    for _ in range(2):
        s = torch.where((s + 1) * (s + 1) <= n, s + 1, s)
    return s


def layer_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Layer norm over the last dim, in int64: mean and standard deviation are exact integers.

    ``gamma`` is at WEIGHT_FRAC bits, ``beta`` in accumulator units, as for linear layers.
    """
    xi = x.long()
    c = xi.shape[-1]
    mean = torch.div(xi.sum(-1, keepdim=True), c, rounding_mode="floor")
    d = xi - mean  # |d| < 2**23
    var = torch.div((d * d).sum(-1, keepdim=True) << 8, c, rounding_mode="floor")  # 2**-32 units
    sd = isqrt(var).clamp_min(1)  # 2**-16 units
    y = torch.div(d << 16, sd, rounding_mode="floor")  # 2**-12 units
    y.mul_(gamma.long()).add_(beta.long())
    return requantize(y.double())
