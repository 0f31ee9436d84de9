"""The discretized logistic mixture with linear RGB coupling, in float (the training loss).

Parameters per position, for K components (layout of the head's 10K channels):
``[logits K | mean R,G,B: 3K | log-scale R,G,B: 3K | coupling a,b,c: 3K]``.

In pixel units (0..255), component k of channel c is a logistic with scale ``exp(log_s)`` and
mean ``128 + 64 * raw_mean``, shifted by the pixel's already-known channels:
``mu_G += tanh(a) (R - 128)``, ``mu_B += tanh(b) (R - 128) + tanh(c) (G - 128)``.
Each channel is its own K-mixture with the shared weights softmax(logits):
``p(R) p(G|R) p(B|R,G)``, each factor ``sum_k pi_k Logistic_k``. [choice] The paper states that the
channels of one pixel are coded in one step with the dependency carried by the coupling only;
sharing the weights across channels (rather than a joint mixture whose weights would be
re-weighted after R is known) gives exactly that, and matches the paper's 575K parameters.

The integer twin of this distribution, used for coding, is ``codec.mgcf.tables``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_SCALE_MIN = -3.0
LOG_SCALE_MAX = 6.0
MEAN_CENTER = 128.0
MEAN_SCALE = 64.0


def split(params: torch.Tensor, k: int):
    """(…, 10K) -> logits (…, K), means (…, 3, K), log-scales (…, 3, K), coupling (…, 3, K)."""
    shape = params.shape[:-1]
    logits = params[..., :k]
    means = params[..., k : 4 * k].reshape(*shape, 3, k)
    log_scales = params[..., 4 * k : 7 * k].reshape(*shape, 3, k)
    coupling = params[..., 7 * k : 10 * k].reshape(*shape, 3, k)
    return logits, means, log_scales, coupling


def channel_means(means: torch.Tensor, coupling: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Means in pixel units (…, 3, K), with R and G known (``pixels`` is (…, 3))."""
    mu = MEAN_CENTER + MEAN_SCALE * means
    t = torch.tanh(coupling)
    r = (pixels[..., 0:1] - 128.0).to(mu.dtype)
    g = (pixels[..., 1:2] - 128.0).to(mu.dtype)
    return torch.stack(
        (mu[..., 0, :], mu[..., 1, :] + t[..., 0, :] * r, mu[..., 2, :] + t[..., 1, :] * r + t[..., 2, :] * g),
        dim=-2,
    )


def log_prob(params: torch.Tensor, pixels: torch.Tensor, k: int) -> torch.Tensor:
    """Natural-log probability of each subpixel: params (…, 10K), pixels (…, 3) -> (…, 3)."""
    logits, means, log_scales, coupling = split(params, k)
    mu = channel_means(means, coupling, pixels)
    log_s = log_scales.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)
    inv_s = torch.exp(-log_s)
    x = pixels.to(mu.dtype).unsqueeze(-1)  # (…, 3, 1)
    centered = x - mu
    upper = (centered + 0.5) * inv_s
    lower = (centered - 0.5) * inv_s
    log_cdf_upper = F.logsigmoid(upper)  # bin 0 takes everything below it
    log_sf_lower = F.logsigmoid(-lower)  # bin 255 takes everything above it
    delta = torch.sigmoid(upper) - torch.sigmoid(lower)
    mid = centered * inv_s
    log_pdf_mid = mid - log_s - 2.0 * F.softplus(mid)  # density x bin width, where delta underflows
    interior = torch.where(delta > 1e-5, torch.log(delta.clamp_min(1e-12)), log_pdf_mid)
    logp = torch.where(x < 0.5, log_cdf_upper, torch.where(x > 254.5, log_sf_lower, interior))
    log_w = F.log_softmax(logits, dim=-1).unsqueeze(-2)  # (…, 1, K)
    return torch.logsumexp(log_w + logp, dim=-1)


def nll_bits(params: torch.Tensor, pixels: torch.Tensor, k: int) -> torch.Tensor:
    """Bits per subpixel, (…, 3): the training loss, and the estimate coding is compared with."""
    return -log_prob(params, pixels, k) / math.log(2.0)
