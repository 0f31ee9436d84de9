"""A float, differentiable-through-the-model stand-in for ``codec.mgcf.calibration`` (scheme 1), so that
per-image fine-tuning (``codec.mgcf.rpft``) minimises the bits the *calibrated* coder will spend.

Why: the coder corrects the model's means and scales from the residuals it has already seen. An
adapter trained on the uncorrected loss learns much of the same correction, which the coder then
no longer finds, and on the photos measured the adapted model with calibration codes *worse* than
the pre-trained one with calibration (``bench/rpft_tuning.py --calibrated``). Trained through the
corrections, the adapters can only earn what calibration leaves.

The stand-in is the scheme's *oracle*: its statistics come from every real pixel of the patches in
the pass at once (not causally, step by step, per segment), so it is one regression and one table
of scale ratios per image and pass, computed from the model's own outputs. The gradient flows
through the regression and the ratios too (not through the choice of context): held constant,
as on the first try, the corrections absorb what the adapters' steps change, the adapters then
push on regardless, and the corrected loss rose (astronaut, 1e5-pixel centre crop, T = 10, 1 thread:
head 3.5367 -> 3.5490, last block 3.5367 -> 3.5571); through them, 3.5338 and 3.5383.
Everything else follows scheme 1: the standardized residual y = (x - m) / s at the mixture's
weighted centre m and log-scale; the mean of every component moves by s (beta . f), f being y of
the causal neighbours W, N, NW, NE, WW, NN in all three channels and of the pixel's earlier
channels, beta the ridge regression of y on f (ridge 50, beta within +-4, shift within +-32
pixels); every log-scale moves by log(O + a E) - log((N + a) E) per context (channel x 12 buckets
of the log-scale x 10 of the neighbours' mean |y|), O the context's sum of |x - m - shift| / s, N
its count, E = 2 log 2, a = 16, within +-1. Neighbours outside the patch or not real count as not
coded (y = 0, not in the surprise), as in the coder.

Measured (README, "Adaptation once the coder calibrates itself"): even with the full gradient,
what fine-tuning finds once the corrections are applied is within 0.1% of the pre-trained model,
so the coder does not use it; it is reached only through ``codec.mgcf.rpft.adapt(calibration=1)`` and
``bench/rpft_tuning.py``'s ``aware=1``.
"""

from __future__ import annotations

import math

import torch

from codec.mgcf.mixture import LOG_SCALE_MAX, LOG_SCALE_MIN, MEAN_SCALE, channel_means, split

NEIGHBOURS = ((0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0))  # codec.mgcf.calibration.NEIGHBOURS
E = 2 * math.log(2)
RIDGE = 50.0
BETA_LIMIT = 4.0
SHIFT_LIMIT = 32.0
Y_LIMIT = 32.0
PRIOR = 16.0
SCALE_BUCKETS, SCALE_LO, SCALE_WIDTH = 12, -1.5, 0.5
SURPRISE_BUCKETS = 10
LOG_RATIO_LIMIT = 1.0


def _shifted(t: torch.Tensor, dr: int, dc: int) -> torch.Tensor:
    """t[b, i + dr, j + dc], zero where that falls outside the patch; t is (B, H, W, …)."""
    h, w = t.shape[1], t.shape[2]
    out = torch.zeros_like(t)
    rows = slice(max(0, -dr), h - max(0, dr))
    cols = slice(max(0, -dc), w - max(0, dc))
    src_rows = slice(rows.start + dr, rows.stop + dr)
    src_cols = slice(cols.start + dc, cols.stop + dc)
    out[:, rows, cols] = t[:, src_rows, src_cols]
    return out


def corrections(params: torch.Tensor, pixels: torch.Tensor, real: torch.Tensor, group: torch.Tensor, k: int):
    """Mean shifts (pixels) and log-scale changes, each (B, H, W, 3), for ``params`` (B, H, W, 10K)
    of patches ``pixels`` (B, H, W, 3), ``real`` (B, H, W) marking real pixels and ``group`` (B,)
    the image of each patch (statistics are per image). Differentiable in ``params``."""
    params, pix = params.float(), pixels.float()
    logits, means, log_scales, coupling = split(params, k)
    mu = channel_means(means, coupling, pix)
    w = torch.softmax(logits, -1).unsqueeze(-2)
    m = (w * mu).sum(-1)
    lbar = (w * log_scales.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)).sum(-1)
    s = lbar.exp()
    realf = real.float().unsqueeze(-1)
    y = ((pix - m) / s).clamp(-Y_LIMIT, Y_LIMIT) * realf  # (B, H, W, 3), 0 where not coded
    nb = torch.stack([_shifted(y, dr, dc) for dr, dc in NEIGHBOURS], -1)  # (B, H, W, 3, 6)
    coded = torch.stack([_shifted(realf, dr, dc)[..., 0] for dr, dc in NEIGHBOURS], -1)  # (B, H, W, 6)
    zero = torch.zeros_like(y[..., 0])
    own = torch.stack(
        [torch.stack([zero, zero], -1), torch.stack([y[..., 0], zero], -1), torch.stack([y[..., 0], y[..., 1]], -1)], -2
    )  # (B, H, W, 3, 2)
    feats = torch.cat([nb.flatten(-2).unsqueeze(-2).expand(*y.shape, 18), own], -1).double()  # (B,H,W,3,20)
    shift = torch.zeros_like(y)
    log_change = torch.zeros_like(y)
    for g in group.unique().tolist():
        sel = (group == g).nonzero().flatten()
        r = real[sel]
        f, yy = feats[sel][r], y[sel][r].double()  # (N, 3, 20), (N, 3)
        gram = torch.einsum("nci,ncj->cij", f, f) + RIDGE * torch.eye(f.shape[-1], dtype=f.dtype)
        beta = torch.linalg.solve(gram, torch.einsum("nci,nc->ci", f, yy).unsqueeze(-1)).squeeze(-1)
        beta = beta.clamp(-BETA_LIMIT, BETA_LIMIT)
        shift[sel] = (s[sel] * (feats[sel] * beta).sum(-1).float()).clamp(-SHIFT_LIMIT, SHIFT_LIMIT)
        # Scale: one ratio per context, from the residuals to the shifted centre.
        z = (pix[sel] - m[sel] - shift[sel]).abs() / s[sel]
        ctx = _contexts(lbar[sel], y[sel], nb[sel], coded[sel])
        rr = r.unsqueeze(-1).expand_as(z)
        n_ctx = 3 * SCALE_BUCKETS * SURPRISE_BUCKETS
        total = torch.zeros(n_ctx, dtype=torch.float64).index_add_(0, ctx[rr], z[rr].double())
        count = torch.zeros(n_ctx, dtype=torch.float64).index_add_(0, ctx[rr], torch.ones_like(z[rr]).double())
        change = torch.log(total + PRIOR * E) - torch.log((count + PRIOR) * E)
        log_change[sel] = change.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT).float()[ctx]
    return shift, log_change


def _contexts(lbar: torch.Tensor, y: torch.Tensor, nb: torch.Tensor, coded: torch.Tensor) -> torch.Tensor:
    """Scheme 1's context of each subpixel (B, H, W, 3): channel x log-scale bucket x surprise."""
    scale_bucket = ((lbar - SCALE_LO) / SCALE_WIDTH).floor().clamp(0, SCALE_BUCKETS - 1).long()
    coded3 = coded.unsqueeze(-2)  # (B, H, W, 1, 6)
    total = (nb.abs() * coded3).sum(-1)  # same channel's neighbours
    earlier = torch.stack([torch.zeros_like(y[..., 0]), y[..., 0].abs(), y[..., 0].abs() + y[..., 1].abs()], -1)
    count = coded.sum(-1, keepdim=True) + torch.arange(3, device=y.device)
    mean_abs = (total + earlier) / count.clamp(min=1)
    thresholds = E * 2.0 ** ((torch.arange(1, 9, device=y.device, dtype=y.dtype) - 4) / 2)
    surprise = torch.bucketize(mean_abs, thresholds, right=True)
    surprise = torch.where(count > 0, surprise, SURPRISE_BUCKETS - 1)
    channel = torch.arange(3, device=y.device)
    return (channel * SCALE_BUCKETS + scale_bucket) * SURPRISE_BUCKETS + surprise


def corrected(params: torch.Tensor, shift: torch.Tensor, log_change: torch.Tensor, k: int) -> torch.Tensor:
    """``params`` with every component's mean moved by ``shift`` (pixels) and log-scale by
    ``log_change`` (both (…, 3), constants): differentiable in ``params``."""
    lead = params.shape[:-1]
    head = params[..., :k]
    means = params[..., k : 4 * k].reshape(*lead, 3, k) + (shift / MEAN_SCALE).unsqueeze(-1)
    log_scales = params[..., 4 * k : 7 * k].reshape(*lead, 3, k) + log_change.unsqueeze(-1)
    return torch.cat([head, means.flatten(-2), log_scales.flatten(-2), params[..., 7 * k :]], -1)
