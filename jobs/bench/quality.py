"""Distortion measures for the lossy benchmark, on 8-bit RGB arrays.

- PSNR over all RGB samples (one MSE for the image, peak 255), as the CCA paper reports.
- MS-SSIM (Wang, Simoncelli, Bovik 2003): 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
  five scales with the paper's weights, computed per RGB channel and averaged; contrast-structure
  terms clamped at 0 before the product. Images need at least 176 pixels a side (five scales of
  an 11-pixel window: 11 x 2**4); smaller ones get None.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from codec.cca.codec import psnr

__all__ = ["ms_ssim", "psnr"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MIN_SIDE = 176  # 11 pixels at the fifth scale


def _window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The 2-D Gaussian window as two 1-D passes (valid region only)."""
    return F.conv2d(F.conv2d(x, g[None, None, None, :]), g[None, None, :, None])


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    sxx = _blur(x * x, window) - mu_x**2
    syy = _blur(y * y, window) - mu_y**2
    sxy = _blur(x * y, window) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * cs).mean((1, 2, 3)), cs.mean((1, 2, 3))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    if min(a.shape[:2]) < MIN_SIDE:
        return None
    x = torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[:, None]  # channels as a batch
    y = torch.from_numpy(b.astype(np.float32)).permute(2, 0, 1)[:, None]
    window = _window()
    factors = []
    for level, weight in enumerate(MS_SSIM_WEIGHTS):
        ssim, cs = _ssim_terms(x, y, window)
        last = level == len(MS_SSIM_WEIGHTS) - 1
        factors.append((ssim if last else cs).clamp_min(0) ** weight)
        if not last:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return float(torch.stack(factors).prod(0).mean())
