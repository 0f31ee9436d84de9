"""Bjontegaard delta rate: the average bitrate difference of a test codec against an anchor at
equal quality, over the quality range both curves cover.

The integration is the ``bjontegaard`` package's (``bd_rate``), with piecewise cubic Hermite
(PCHIP) interpolation of log10(rate) against quality, the monotone interpolation of the JCT-VC
common test conditions' BD tool, rather than VCEG-M33's single cubic fit: a cubic through a
curve that is nearly flat in quality (a weak model whose extra bits buy little PSNR) swings
wildly and gives nonsense such as -100%, while PCHIP stays between the measured points. (Until
issue 18 this module had its own piecewise-linear version; it gave the README's older BD-rates.)

What stays ours is what the package leaves to the caller: each curve needs at least 4 points and
must rise in quality with rate (points that do not are dropped), and with no common quality range
the result is None, not NaN with a warning. Negative means the test codec needs fewer bits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from bjontegaard import bd_rate as _bd_rate

METHOD = "pchip"


def bd_rate(anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]]) -> float | None:
    """Points are (rate, quality), e.g. (bpp, PSNR dB); returns percent or None."""
    a, t = _rising(anchor), _rising(test)
    if len(a) < 4 or len(t) < 4:
        return None
    qa, qt = [p[1] for p in a], [p[1] for p in t]
    if not min(max(qa), max(qt)) > max(min(qa), min(qt)):
        return None
    rates = ([p[0] for p in a], qa, [p[0] for p in t], qt)
    return float(_bd_rate(*rates, method=METHOD, require_matching_points=False, min_overlap=0))


def _rising(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points sorted by rate, keeping each only if its quality beats every cheaper one."""
    out: list[tuple[float, float]] = []
    for rate, quality in sorted(points):
        if np.isfinite(quality) and (not out or quality > out[-1][1]):
            out.append((rate, quality))
    return out
