"""Integer coding tables of the lossy codec, computed once when a model is exported and stored in
its file; coders only ever use the stored integers.

- **y**: a Gaussian of each of ``len(SCALES)`` scales (log-spaced, 0.11 to 256, as CompressAI),
  over the integers -R..R (R = ceil(TAIL * scale)) plus an escape symbol at each end. A latent
  element is coded with the table of the smallest listed scale >= its predicted scale.
- **z**: the learned factorized density of each channel, over the integers where its CDF is
  away from 0 and 1 (at most -Z_RANGE..Z_RANGE), plus the two escapes.

A table of n symbols is n integers q summing to 2**24 - n; constriction codes symbol j with
frequency (q[j] + 1) / 2**24 (see ``codec.mgcf.tables``). Values beyond an escape are coded after it
as Exp-Golomb bits (``codec.cca.bitstream``).
"""

from __future__ import annotations

import math

import torch

from codec.cca.factorized import FactorizedDensity
from codec.fixedpoint import ACT_FRAC

PRECISION = 24
SCALES = torch.exp(torch.linspace(math.log(0.11), math.log(256.0), 64, dtype=torch.float64))
TAIL = 6.0  # Gaussian support in scales: two-sided tail mass 2e-9, left to the escapes
Z_RANGE = 64
Z_TAIL = 1e-9


def scale_thresholds() -> torch.Tensor:
    """The table scales in activation units, rounded up: scale index = #thresholds below sigma."""
    return torch.ceil(SCALES * (1 << ACT_FRAC))


def _quantize(p: torch.Tensor) -> torch.Tensor:
    """Probabilities (n,) -> integers q >= 0 with sum(q) == 2**24 - n (the rest to the mode)."""
    n = p.numel()
    total = (1 << PRECISION) - n
    q = torch.floor(p / p.sum() * total).long().clamp_min(0)
    q[torch.argmax(p)] += total - int(q.sum())
    return q


def gaussian_tables() -> list[torch.Tensor]:
    out = []
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    for s in SCALES.tolist():
        r = max(1, math.ceil(TAIL * s))
        edges = (torch.arange(-r, r + 2, dtype=torch.float64) - 0.5) / s
        cdf = normal.cdf(edges)
        inner = cdf[1:] - cdf[:-1]
        tail = cdf[0]
        out.append(_quantize(torch.cat([tail.reshape(1), inner, tail.reshape(1)])))
    return out


def factorized_tables(density: FactorizedDensity) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per channel of z: its table and the value of its first inner symbol (its lowest value)."""
    values = torch.arange(-Z_RANGE, Z_RANGE + 2, dtype=torch.float64) - 0.5  # bin edges
    cdf = density.cdf(values)  # (C, 2 * Z_RANGE + 2)
    tables, lows = [], []
    for c in range(cdf.shape[0]):
        inside = torch.nonzero((cdf[c, 1:] > Z_TAIL) & (cdf[c, :-1] < 1 - Z_TAIL)).flatten()
        lo, hi = (int(inside.min()), int(inside.max())) if inside.numel() else (Z_RANGE, Z_RANGE)
        p = cdf[c, lo + 1 : hi + 2] - cdf[c, lo : hi + 1]
        below, above = cdf[c, lo], 1 - cdf[c, hi + 1]
        p = torch.cat([below.reshape(1), p, above.reshape(1)]).clamp_min(0)
        tables.append(_quantize(p))
        lows.append(lo - Z_RANGE)
    return tables, torch.tensor(lows, dtype=torch.int64)


def pack(tables: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables of different lengths -> one padded (T, max n) int32 tensor and the lengths."""
    lengths = torch.tensor([t.numel() for t in tables], dtype=torch.int64)
    packed = torch.zeros(len(tables), int(lengths.max()), dtype=torch.int32)
    for i, t in enumerate(tables):
        packed[i, : t.numel()] = t.int()
    return packed, lengths


def unpack(packed: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    return [packed[i, : int(n)].long() for i, n in enumerate(lengths.tolist())]
