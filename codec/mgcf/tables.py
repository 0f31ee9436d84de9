"""Integer frequency tables of the discretized logistic mixture (the twin of ``codec.mgcf.mixture``).

For each subpixel to code, 256 integers ``q`` with ``sum(q) == 2**24 - 256``; the coder gives
symbol v the frequency ``(q[v] + 1) / 2**24``. ``constriction``'s fast quantizer maps such a
table to exactly those frequencies with integer-only arithmetic (its scale factor is then 1.0),
so the table *is* the coding distribution.

Units: network outputs at 2**-12; means in 1/64 pixel; inverse scales at 2**-20; the logistic
argument z at 2**-26; CDF values at 2**-24; mixture weights at 2**-12 (the largest is 4096).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import torch

from codec.fixedpoint import (
    ACT_FRAC,
    EXP_LUT_RANGE,
    INV_SCALE_FRAC,
    SIGMOID_FRAC,
    SIGMOID_LUT_RANGE,
    TANH_LUT_RANGE,
    lut_lookup,
)
from codec.mgcf.mixture import LOG_SCALE_MAX, LOG_SCALE_MIN

NUM_SYMBOLS = 256
TABLE_TOTAL = 2**24 - NUM_SYMBOLS
ROWS_PER_CHUNK = 512

_ONE = 2**ACT_FRAC
_Z_FRAC = 6 + INV_SCALE_FRAC  # (1/64 pixel) * 2**-20
_Z_LIMIT = SIGMOID_LUT_RANGE * 2**_Z_FRAC
_Z_SHIFT = _Z_FRAC - ACT_FRAC  # sigmoid table step is 2**-12
_LS_LO, _LS_HI = round(LOG_SCALE_MIN * _ONE), round(LOG_SCALE_MAX * _ONE)


@functools.cache
def _edge_index(device: torch.device) -> torch.Tensor:
    return torch.arange(NUM_SYMBOLS - 1, dtype=torch.float64, device=device)


@dataclass
class MixtureInts:
    """One channel's mixture for N positions, in the units the tables are built from (all int64,
    (N, K)): weights at 2**-12 (the largest is 4096), means in 1/64 pixel (coupling applied),
    log-scales at 2**-12 (clamped to the model's range) and their inverse scales at 2**-20."""

    weights: torch.Tensor
    mean: torch.Tensor
    log_scale: torch.Tensor
    inv_scale: torch.Tensor


class Correction(Protocol):
    """Adjusts a chunk of rows' mixtures before their tables are built (``codec.mgcf.calibration``)."""

    def __call__(self, rows: slice, mixture: MixtureInts) -> MixtureInts: ...


def frequency_tables(
    params: torch.Tensor,
    channel: int,
    pixels: torch.Tensor,
    k: int,
    luts: dict[str, torch.Tensor],
    correct: Correction | None = None,
) -> torch.Tensor:
    """Tables (N, 256) int64 for ``channel`` of N positions.

    ``luts`` are the model's tables as float64 (``ExactMGCF.luts``).

    ``params`` (N, 10K) are the exact network outputs; ``pixels`` (N, 3) must hold the true R
    (and G) values when coding G (and B); later channels are ignored. ``correct``, if given, is
    called once per chunk of rows, in order, and its mixtures are the ones tabulated.
    """
    out = []
    for s in range(0, params.shape[0], ROWS_PER_CHUNK):
        rows = slice(s, min(s + ROWS_PER_CHUNK, params.shape[0]))
        mixture = mixture_ints(params[rows], channel, pixels[rows], k, luts)
        if correct is not None:
            mixture = correct(rows, mixture)
        out.append(mixture_tables(mixture, luts))
    return torch.cat(out) if out else torch.empty(0, NUM_SYMBOLS, dtype=torch.int64, device=params.device)


def mixture_ints(
    params: torch.Tensor, channel: int, pixels: torch.Tensor, k: int, luts: dict[str, torch.Tensor]
) -> MixtureInts:
    """The integer mixture of ``channel`` from the exact network outputs (see ``frequency_tables``)."""
    p = params.long()
    logits = p[:, :k]
    weights = lut_lookup(logits - logits.max(1, keepdim=True).values, luts["exp"], -EXP_LUT_RANGE * _ONE, 0).long()
    mean = 128 * 64 + p[:, k * (1 + channel) : k * (2 + channel)]  # 1/64 pixel
    if channel > 0:
        pix = pixels.to(p.device).long() - 128
        coupling = p[:, 7 * k : 10 * k]
        lim = TANH_LUT_RANGE * _ONE

        def tanh(j: int) -> torch.Tensor:
            return lut_lookup(coupling[:, j * k : (j + 1) * k], luts["tanh"], -lim, lim).long()

        shift = tanh(0) * pix[:, 0:1] if channel == 1 else tanh(1) * pix[:, 0:1] + tanh(2) * pix[:, 1:2]
        mean = mean + torch.div(shift + 32, 64, rounding_mode="floor")
    log_scale = p[:, k * (4 + channel) : k * (5 + channel)].clamp(_LS_LO, _LS_HI)
    return MixtureInts(weights, mean, log_scale, inverse_scale(log_scale, luts))


def inverse_scale(log_scale: torch.Tensor, luts: dict[str, torch.Tensor]) -> torch.Tensor:
    """exp(-log_scale) at 2**-20 (int64) of log-scales at 2**-12, from the model's table."""
    return lut_lookup(log_scale, luts["inv_scale"], _LS_LO, _LS_HI).long()


def mixture_tables(mixture: MixtureInts, luts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tables (N, 256) of integer mixtures whose means stay within +-2**23 (1/64 pixel) and whose
    inverse scales are in [1, 2**27): the bounds that keep the table positions exact."""
    weights, mean, inv_scale = mixture.weights, mixture.mean, mixture.inv_scale
    # z at edge v is (64 v + 32 - mean) * inv_scale = offset + v * slope, in 2**-26 units. Shifted
    # by _Z_LIMIT + half a table step and scaled by 2**-_Z_SHIFT, both terms are exact float64
    # dyadics (< 2**51 with 14 fractional bits), so one multiply-add gives the exact table position
    # and truncating it (it is clamped to be >= 0) is the floor.
    scale = 2.0**-_Z_SHIFT
    slope = (inv_scale * 64).double().mul_(scale).unsqueeze(-1)
    offset = ((32 - mean) * inv_scale + (_Z_LIMIT + (1 << (_Z_SHIFT - 1)))).double().mul_(scale).unsqueeze(-1)
    position = torch.addcmul(offset, slope, _edge_index(mean.device)).clamp_(0, 2 * _Z_LIMIT * scale)
    cdf = luts["sigmoid"][position.long()]  # (n, k, 255), 0..2**24
    mixed = torch.bmm(weights.double().unsqueeze(1), cdf).squeeze(1).long()  # (n, 255), exact: < 2**39
    return _table_from_cdf(mixed, weights.sum(1, keepdim=True))


def _table_from_cdf(cdf: torch.Tensor, total_weight: torch.Tensor) -> torch.Tensor:
    """CDF values (n, 255) at the symbols' upper edges, in units of ``total_weight * 2**-24`` ->
    tables (n, 256) summing to TABLE_TOTAL; the rounding remainder goes to the likeliest symbol."""
    n = cdf.shape[0]
    zero = torch.zeros(n, 1, dtype=torch.int64, device=cdf.device)
    cumulative = torch.cat((zero, cdf, total_weight << SIGMOID_FRAC), 1)
    mass = cumulative[:, 1:] - cumulative[:, :-1]  # (n, 256), sums to total_weight * 2**24
    q = torch.div(mass * (2**16 - 1), total_weight << 16, rounding_mode="floor")  # sums to <= TABLE_TOTAL
    leftover = TABLE_TOTAL - q.sum(1)
    q[torch.arange(n, device=cdf.device), q.argmax(1)] += leftover
    return q


def prior_table(scale_exp: int, sigmoid: torch.Tensor) -> torch.Tensor:
    """Table (256,) of a zero-mean logistic with scale ``2**scale_exp`` over symbols ``v - 128``
    (the adapters' prior, ``codec.mgcf.adapters``), from the model's sigmoid table ``sigmoid`` (int64).

    The upper edge of symbol v is ``(v - 127.5) / 2**scale_exp``, on the table's 2**-12 grid for
    scale_exp <= 11, so the table is read without any rounding.
    """
    if scale_exp > ACT_FRAC - 1:
        raise ValueError("prior scale too fine for the sigmoid table")
    edges = (2 * torch.arange(NUM_SYMBOLS - 1, dtype=torch.int64) - 255) << (ACT_FRAC - 1 - scale_exp)
    index = (edges + SIGMOID_LUT_RANGE * _ONE).clamp(0, 2 * SIGMOID_LUT_RANGE * _ONE)
    cdf = sigmoid.to("cpu")[index].long().unsqueeze(0)
    return _table_from_cdf(cdf, torch.ones(1, 1, dtype=torch.int64))[0]
