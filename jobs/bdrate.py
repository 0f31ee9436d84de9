"""Bjontegaard delta rate: the average bitrate difference of a test codec against an anchor at
equal quality, over the quality range both curves cover.

Bjontegaard's method (VCEG-M33) with piecewise-linear instead of cubic interpolation of
log10(rate) against quality: a cubic fit through a curve that is nearly flat in quality (a weak
model whose extra bits buy little PSNR) swings wildly and gives nonsense such as -100%, while
linear pieces stay between the measured points. Both curves are integrated over their common
quality interval and the mean log difference becomes a percentage; negative means the test codec
needs fewer bits. Each curve needs at least 4 points and must rise in quality with rate (points
that do not are dropped); with no overlap the result is None.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bd_rate(anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]]) -> float | None:
    """Points are (rate, quality), e.g. (bpp, PSNR dB); returns percent or None."""
    a, t = _rising(anchor), _rising(test)
    if len(a) < 4 or len(t) < 4:
        return None
    qa, ra = np.array([p[1] for p in a]), np.log10([p[0] for p in a])
    qt, rt = np.array([p[1] for p in t]), np.log10([p[0] for p in t])
    lo, hi = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, 1001)
    diff = np.interp(grid, qt, rt) - np.interp(grid, qa, ra)
    return float((10 ** np.mean(diff) - 1) * 100)


def _rising(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points sorted by rate, keeping each only if its quality beats every cheaper one."""
    out: list[tuple[float, float]] = []
    for rate, quality in sorted(points):
        if np.isfinite(quality) and (not out or quality > out[-1][1]):
            out.append((rate, quality))
    return out
