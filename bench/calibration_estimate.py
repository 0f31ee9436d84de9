"""Backward-adaptive calibration, float estimate (issue 17, step 1): how many bits would the coder
save if each wavefront step's mixtures were corrected from the residuals of the pixels its segment
has already coded? The design of ``codec.mgcf.calibration`` was chosen with it.

Everything a decoder could rebuild: the statistics of step g come from steps < g of the same
segment (and, for G and B, from the same pixel's R and G), so no side information is sent. The
model's parameters are the exact path's own (``ExactMGCF.full_params``, read as floats); the bits
are the float mixture's (``codec.mgcf.mixture.nll_bits``): estimated, not file sizes.

Per coded subpixel, with mixture weights pi_k, means mu_k, log-scales l_k: centre m = sum pi mu,
l = sum pi l, s = exp(l), observed residual z = |x - m| / s and the residual the model expects, e
(``expected="model"``: each logistic's mean absolute deviation about m; ``"const"``: 2 log 2).
A ``Variant`` chooses:

- the scale correction's context: channel x bucket of l x bucket of the neighbours' *surprise*
  (their mean z / e; the first ``neighbours`` of W, N, NW, NE, WW, NN, and for G and B this
  pixel's earlier channels); the correction is l_k += log((O + a) / (E + a)), O and E the
  context's sums of z and e so far, a = ``prior``;
- the mean correction: ``means`` (bias cancellation per context, as CALIC) or ``regress`` (ridge
  regression of the signed residual (x - m) / s on the neighbours' signed residuals, one channel
  or ``all_channels``, and this pixel's earlier channels), with ``scale_after_mean`` the scale
  statistics then use the corrected residual.

Measured with the shipped model ``mgcf-bf281dbfc87821e6``, 1 thread (estimated bits, change
against the model alone):

- kodim23 + chelsea: scale with the 4-neighbour surprise context -2.02% (without it -0.83%);
  ``expected`` const as good as model (-2.02%); 6 neighbours -2.16%; cross-channel surprise
  -1.55%; 16 surprise buckets, prior 4, gains 0.8 / 1.25 on the correction, a separate bucket for
  the pixel's earlier channels, 6 scale buckets: all within 0.1%; bias cancellation +0.00%;
  regression of the mean -3.70%, with the scale after it -3.87% (ridge 10, 50, 250: the same);
  regression on all three channels' neighbours -4.12% (what scheme 1 does).
- pkg13, centre crops of at most 400,000 pixels (``--max-pixels 4e5``): see the README's
  calibration section for the table (scale only, regression on one channel, on all channels).

    python bench/calibration_estimate.py ~/.cache/callic/data/pkg13 --max-pixels 4e5 [--limit N] [--out rows.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from codec.api import load_model
from codec.images import read_image
from codec.mgcf.learned import patchify, real_masks, segments
from codec.mgcf.mixture import LOG_SCALE_MAX, LOG_SCALE_MIN, channel_means, nll_bits, split
from codec.mgcf.wavefront import step_positions

NEIGHBOURS = ((0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0))  # W, N, NW, NE, WW, NN: earlier groups
LOGISTIC_MAD = 2 * math.log(2)  # E|Z| of the standard logistic


@dataclass(frozen=True)
class Variant:
    name: str
    scale_buckets: int = 12  # buckets of l, 0.5 wide from -1.5
    surprise_buckets: int = 10  # 0: no neighbour context; else buckets of log2(surprise) / 2
    prior: float = 16.0
    clamp: float = 1.0
    cap: float = 1e9
    means: bool = False
    expected: str = "model"  # or "const": e = 2 log 2, the single logistic's
    neighbours: int = 4  # the first N of NEIGHBOURS
    cross_channel: bool = False  # neighbours' surprise averaged over their three channels
    within_buckets: int = 0  # >0: this pixel's earlier channels are their own context dimension
    gain: float = 1.0  # the log-scale correction is multiplied by this
    regress: bool = False  # mean correction: ridge regression of the signed residual on the neighbours'
    ridge: float = 50.0
    scale_after_mean: bool = False  # the scale statistics use the residual to the corrected mean
    all_channels: bool = False  # regression features: every channel of the neighbours, not only its own


VARIANTS = [
    Variant("scale-only", neighbours=6, expected="const"),
    Variant("regress-after", neighbours=6, expected="const", regress=True, scale_after_mean=True),
    Variant("regress-allch", neighbours=6, expected="const", regress=True, scale_after_mean=True, all_channels=True),
]


def mixture_stats(prm: torch.Tensor, pix: torch.Tensor, k: int):
    """Per subpixel (…, 3): centre m, log-scale l, observed z and expected e (see the module doc)."""
    logits, means, log_scales, coupling = split(prm, k)
    mu = channel_means(means, coupling, pix)
    ls = log_scales.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)
    w = torch.softmax(logits, -1).unsqueeze(-2)
    m = (w * mu).sum(-1)
    lbar = (w * ls).sum(-1)
    s = lbar.exp()
    sk = ls.exp()
    d = ((mu - m.unsqueeze(-1)) / sk).abs()
    e = (w * sk * (d + 2 * F.softplus(-d))).sum(-1) / s
    z = (pix - m).abs() / s
    return m, lbar, s, z, e


def corrected(prm: torch.Tensor, k: int, dl: torch.Tensor, dm: torch.Tensor | None) -> torch.Tensor:
    """Parameters with each channel's log-scales shifted by ``dl`` (…, 3) and means by ``dm`` (pixels)."""
    out = prm.clone()
    ls = out[..., 4 * k : 7 * k].unflatten(-1, (3, k))
    ls += dl.unsqueeze(-1)
    if dm is not None:
        mean = out[..., k : 4 * k].unflatten(-1, (3, k))
        mean += (dm / 64.0).unsqueeze(-1)
    return out


def bucket_scale(lbar: torch.Tensor, n: int) -> torch.Tensor:
    width = 6.0 / n  # n buckets over l in [-1.5, 4.5)
    return ((lbar + 1.5) / width).floor().clamp(0, n - 1).long()


def bucket_surprise(surprise: torch.Tensor, have: torch.Tensor, n: int) -> torch.Tensor:
    """n - 1 buckets of 2 * log2(surprise) around 0, and bucket n - 1 for 'no neighbour'."""
    b = (2 * torch.log2(surprise.clamp_min(1e-6))).floor() + (n - 1) // 2
    return torch.where(have, b.clamp(0, n - 2), torch.full_like(b, n - 1)).long()


def neighbour_surprise(ratio: torch.Tensor, rows, cols, here: torch.Tensor, v: Variant):
    """Mean z / e of the causal neighbours (same channel, or all three with ``cross_channel``),
    and for G and B of this pixel's earlier channels; and whether there was any."""
    nb = torch.stack([ratio[:, rows + 2 + dr, cols + 2 + dc] for dr, dc in NEIGHBOURS[: v.neighbours]], 0)
    if v.cross_channel:
        nb = nb.nanmean(-1, keepdim=True).expand_as(nb)
    nan = torch.full_like(here[..., 0], float("nan"))
    within = torch.stack(
        [torch.stack([nan, here[..., 0], here[..., 0]], -1), torch.stack([nan, nan, here[..., 1]], -1)], 0
    )
    allnb = nb if v.within_buckets else torch.cat([nb, within], 0)
    have_each = ~torch.isnan(allnb)
    count = have_each.sum(0)
    surprise = torch.where(have_each, allnb, torch.zeros_like(allnb)).sum(0) / count.clamp_min(1)
    own = within.nanmean(0)  # NaN for R
    return surprise, count > 0, own


def estimate(pixels: np.ndarray, model, variants: list[Variant], per_stream: int) -> dict:
    cfg = model.exact.cfg
    p, k = cfg.patch, cfg.mixtures
    h, w, _ = pixels.shape
    patches = patchify(pixels, p)
    params = model.exact.full_params(patches.long()).float().div_(4096.0)
    mask = real_masks(h, w, p, range(patches.shape[0]))
    segs = segments(patches.shape[0], per_stream)
    seg_of = torch.zeros(patches.shape[0], dtype=torch.long)
    for i, sg in enumerate(segs):
        seg_of[sg.start : sg.stop] = i
    nseg, b = len(segs), patches.shape[0]
    pix_all = patches.float()
    # Observed surprise z / e of every coded subpixel, with a border; NaN where not coded yet.
    ratio = torch.full((b, p + 4, p + 4, 3), float("nan"))  # a border of 2
    ratio_const = ratio.clone()
    signed = torch.zeros((b, p + 4, p + 4, 3))  # (x - m) / s, 0 where not coded
    nfeat_of = {v.name: (3 if v.all_channels else 1) * len(NEIGHBOURS) + 2 for v in variants}
    xtx = {v.name: torch.zeros(nseg, 3, nfeat_of[v.name], nfeat_of[v.name], dtype=torch.float64) for v in variants}
    xty = {v.name: torch.zeros(nseg, 3, nfeat_of[v.name], dtype=torch.float64) for v in variants}
    base_bits = 0.0
    bits = {v.name: 0.0 for v in variants}
    state = {}
    for v in variants:
        nctx = 3 * v.scale_buckets * max(1, v.surprise_buckets) * max(1, v.within_buckets)
        state[v.name] = {key: torch.zeros(nseg * nctx, dtype=torch.float64) for key in ("O", "E", "B", "N")}
    seg_rows = seg_of[:, None].float()
    for step in range(3 * p - 2):
        rows, cols = step_positions(p, step)
        real = mask[:, rows, cols]  # (b, n)
        if not real.any():
            continue
        prm = params[:, rows, cols]
        pix = pix_all[:, rows, cols]
        m, lbar, s, z, e = mixture_stats(prm, pix, k)
        base = nll_bits(prm, pix, k)
        base_bits += float(base[real].sum())
        e_const = torch.full_like(e, LOGISTIC_MAD)
        y = (pix - m) / s
        nbr = torch.stack([signed[:, rows + 2 + dr, cols + 2 + dc] for dr, dc in NEIGHBOURS], -1)  # (b,n,3,6)
        zero = torch.zeros_like(y[..., 0])
        own = torch.stack([torch.stack([zero, y[..., 0], y[..., 0]], -1), torch.stack([zero, zero, y[..., 1]], -1)], -1)
        feats_same = torch.cat([nbr, own], -1).double()  # (b, n, 3, 8)
        allc = nbr.flatten(-2).unsqueeze(-2).expand(-1, -1, 3, -1)  # (b, n, 3, 18)
        feats_all = torch.cat([allc, own], -1).double()
        seg_idx = seg_rows.expand_as(real).long().unsqueeze(-1).expand(-1, -1, 3)  # (b, n, 3)
        chan = torch.arange(3).expand_as(z)
        r3 = real.unsqueeze(-1).expand(-1, -1, 3)
        for v in variants:
            st = state[v.name]
            ev = e if v.expected == "model" else e_const
            ratio_map = ratio if v.expected == "model" else ratio_const
            surprise, have, own = neighbour_surprise(ratio_map, rows, cols, z / ev, v)
            sb = bucket_scale(lbar, v.scale_buckets)
            ctx = chan * v.scale_buckets + sb
            if v.surprise_buckets:
                ctx = ctx * v.surprise_buckets + bucket_surprise(surprise, have, v.surprise_buckets)
            if v.within_buckets:
                ctx = ctx * v.within_buckets + bucket_surprise(own, ~torch.isnan(own), v.within_buckets)
            nctx = 3 * v.scale_buckets * max(1, v.surprise_buckets) * max(1, v.within_buckets)
            idx = seg_idx * nctx + ctx
            o, ee, bb, nn = (st[key][idx] for key in ("O", "E", "B", "N"))
            a = v.prior
            dl = (v.gain * torch.log((o + a * 1.0) / (ee + a))).clamp(-v.clamp, v.clamp).float()
            dm = (s * (bb / (nn + a))).float() if v.means else None
            if v.regress:
                feats = feats_all if v.all_channels else feats_same
                lam = v.ridge * torch.eye(nfeat_of[v.name], dtype=torch.float64)
                beta = torch.linalg.solve(xtx[v.name] + lam, xty[v.name].unsqueeze(-1)).squeeze(-1)  # (nseg,3,8)
                bsel = beta[seg_of]  # (b, 3, 8)
                pred = (feats * bsel.unsqueeze(1)).sum(-1).float()  # (b, n, 3)
                dm = s * pred
                rf = feats[real]  # (N, 3, 8)
                segr = seg_idx[..., 0][real]
                xtx[v.name].index_add_(0, segr, rf.unsqueeze(-1) * rf.unsqueeze(-2))
                xty[v.name].index_add_(0, segr, rf * y[real].double().unsqueeze(-1))
            bits[v.name] += float(nll_bits(corrected(prm, k, dl, dm), pix, k)[real].sum())
            sel = idx[r3]
            zv = (pix - m - dm).abs() / s if (v.scale_after_mean and dm is not None) else z
            st["O"].index_add_(0, sel, zv[r3].double())
            st["E"].index_add_(0, sel, ev[r3].double())
            st["B"].index_add_(0, sel, ((pix - m) / s)[r3].double())
            st["N"].index_add_(0, sel, torch.ones_like(sel, dtype=torch.float64))
            if v.cap < 1e9:
                full = st["N"] > v.cap
                if full.any():
                    for key in ("O", "E", "B", "N"):
                        st[key][full] *= 0.5
        nan = torch.full_like(z, float("nan"))
        ratio_const[:, rows + 2, cols + 2] = torch.where(r3, z / e_const, nan)
        ratio[:, rows + 2, cols + 2] = torch.where(r3, z / e, nan)
        signed[:, rows + 2, cols + 2] = torch.where(r3, y, torch.zeros_like(y))
    subpixels = 3 * h * w
    out = {"pixels": h * w, "base_bpsp": base_bits / subpixels}
    for name, value in bits.items():
        out[name] = value / subpixels
    return out


def centre_crop(px: np.ndarray, max_pixels: float) -> np.ndarray:
    """The centre of ``px`` with about ``max_pixels`` pixels and its aspect (all of it if smaller)."""
    h, w, _ = px.shape
    if h * w > max_pixels:
        f = math.sqrt(max_pixels / (h * w))
        ch, cw = int(h * f), int(w * f)
        px = px[(h - ch) // 2 : (h - ch) // 2 + ch, (w - cw) // 2 : (w - cw) // 2 + cw]
    return np.ascontiguousarray(px)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--model")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--max-pixels", type=float, default=1e6, help="larger images: a centre crop of about this many")
    ap.add_argument("--per-stream", type=int, default=64)
    ap.add_argument("--out", help="JSON lines, one per image")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(args.model)
    files = sorted(Path(args.folder).glob("*.png"))[: args.limit]
    rows = []
    for path in files:
        raster = read_image(path)
        px = raster.pixels
        if px.ndim != 3 or px.shape[2] != 3 or px.dtype != np.uint8:
            continue
        px = centre_crop(px, args.max_pixels)
        t0 = time.perf_counter()
        res = {"image": path.name, **estimate(px, model, VARIANTS, args.per_stream)}
        res["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(res)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}), flush=True)
    if rows:
        change = {v.name: 100 * float(np.mean([r[v.name] / r["base_bpsp"] - 1 for r in rows])) for v in VARIANTS}
        print("mean change vs the model alone (estimated):", ", ".join(f"{k} {v:+.2f}%" for k, v in change.items()))
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
