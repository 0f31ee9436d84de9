"""Bjontegaard delta rate: the average bitrate difference of a test codec against an anchor at
equal quality, over the quality range both curves cover.

Classic method (VCEG-M33): fit log10(rate) as a cubic polynomial of quality for each curve,
integrate both over the common quality interval, and turn the mean log difference into a
percentage. Negative means the test codec needs fewer bits. Each curve needs at least 4 points;
with no overlap the result is None.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bd_rate(anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]]) -> float | None:
    """Points are (rate, quality), e.g. (bpp, PSNR dB); returns percent or None."""
    if len(anchor) < 4 or len(test) < 4:
        return None
    ra, qa = np.log10([p[0] for p in anchor]), np.array([p[1] for p in anchor])
    rt, qt = np.log10([p[0] for p in test]), np.array([p[1] for p in test])
    lo, hi = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    if not hi > lo:
        return None
    fit_a, fit_t = np.polyint(np.polyfit(qa, ra, 3)), np.polyint(np.polyfit(qt, rt, 3))
    mean_a = (np.polyval(fit_a, hi) - np.polyval(fit_a, lo)) / (hi - lo)
    mean_t = (np.polyval(fit_t, hi) - np.polyval(fit_t, lo)) / (hi - lo)
    return float((10 ** (mean_t - mean_a) - 1) * 100)
