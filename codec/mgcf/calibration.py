"""Backward-adaptive calibration of the learned coder's mixtures (issue 17): each wavefront step's
means and scales are corrected from the residuals of the pixels the same segment has already
coded, so the file pays no side information and a decoder rebuilds every correction itself.

Why: the base model is under-trained, and on a given image its residuals stay predictable from
its neighbours' residuals (the model is too smooth or too sharp there) and its scales are off by
a factor that depends on the context. JPEG-XL's MA tree learns such statistics per image while it
codes; this is the same idea on top of the network. Float estimates: ``bench/calibration_estimate.py``.

Scheme 1, per segment (an independent stream), per channel c of each coded subpixel, with the
mixture's weights w_k, means mu_k (1/64 pixel) and log-scales l_k of ``codec.mgcf.tables.MixtureInts``:

- centre m = floor(sum w mu / sum w), scale s = exp(lbar) with lbar = floor(sum w l / sum w),
  read as 1/s from the model's inverse-scale table;
- the standardized residual y = (x - m) / s at 2**-8, clamped to +-32, is kept for every coded
  subpixel of the patch;
- **mean**: features f = y of the causal neighbours (W, N, NW, NE, WW, NN: earlier wavefront groups)
  in all three channels, and y of this pixel's earlier channels; the mean of every component moves
  by s * (beta . f), beta solving the ridge regression of y on f over the segment's coded pixels
  of channel c (refitted every SOLVE_EVERY = 4 steps);
- **scale**: the context is channel x bucket of lbar x bucket of the neighbours' mean |y| (and this
  pixel's earlier channels'), and every 1/s_k is multiplied by (N + a) E / (O + a E), O being the
  context's sum of |x - m - dm| / s, N its count, E = 2 log 2 the logistic's mean |y| and a a
  prior of 16 samples; the factor stays within [1/e, e].

Everything is integer: statistics are int64 sums (order-free), the regression's Gram matrices are
sums of products below 2**53 computed in float64 (exact, as the network's), and the ridge system
is solved by fixed-point elimination in int64 with floor divisions. So encoder and decoder agree
on any device and thread count. The encoder runs the same step loop as the decoder (its tables
are built step by step anyway), so the two cannot drift apart.

Bounds (checked by tests on noise and on flat images): |y| <= 2**13, so a Gram entry is at most
2**26 per subpixel and 2**54 for the largest segment a header can describe (65535 patches of
64 x 64); the solver shifts each system below 2**30 first, so its products stay below 2**62.
"""

from __future__ import annotations

import torch

from codec.mgcf.tables import MixtureInts, inverse_scale

SCHEME = 1
SECTION = b"CALB"  # codec.header.CALIBRATION_SECTION: one byte, the scheme
NEIGHBOURS = ((0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0))  # W, N, NW, NE, WW, NN
BORDER = 2
Y_FRAC = 8  # standardized residuals at 2**-8
Y_LIMIT = 32 << Y_FRAC
_Y_SHIFT = 6 + 20 - Y_FRAC  # (1/64 pixel) x (2**-20 inverse scale) -> 2**-8
BETA_FRAC = 12
BETA_LIMIT = 4 << BETA_FRAC
RIDGE = 50 << (2 * Y_FRAC)
SOLVE_BITS = 30
SOLVE_EVERY = 4  # steps between refits of the regression (the solve is the costly part)
MEAN_SHIFT_LIMIT = 32 * 64  # 32 pixels, in 1/64 pixel
MEAN_LIMIT = (1 << 23) - MEAN_SHIFT_LIMIT - 1  # keeps codec.mgcf.tables' positions exact
INV_SCALE_LIMIT = (1 << 27) - 1
SCALE_BUCKETS, SCALE_BUCKET_LO, SCALE_BUCKET_WIDTH = 12, -6144, 2048  # lbar in [-1.5, 4.5), 2**-12
SURPRISE_BUCKETS = 10  # 9 of 2 log2(mean |y| / E) from -4, and one for "no neighbour coded yet"
# Constants of the scheme, written out (never recomputed with platform math): E = 2 log 2 at
# 2**-8, round(354.89); the surprise thresholds round(E 2**((j - 4) / 2) 2**16), j = 1..8.
LOGISTIC_MAD = 355
SURPRISE_STEPS = (8225519, 11632640, 16451037, 23265280, 32902075, 46530560, 65804149, 93061120)
PRIOR = 16
RATIO_MIN, RATIO_MAX, RATIO_ONE = 1507, 11134, 4096  # e**-1 and e at 2**-12
NUM_FEATURES = 3 * len(NEIGHBOURS) + 2
CONTEXTS = 3 * SCALE_BUCKETS * SURPRISE_BUCKETS


def section(scheme: int) -> bytes:
    """The CALB payload of a file coded with ``scheme``."""
    check_scheme(scheme)
    return bytes([scheme])


def check_scheme(scheme: int) -> None:
    """Refuse a calibration scheme this version does not implement."""
    if scheme != SCHEME:
        from codec.errors import UnsupportedError

        raise UnsupportedError(f"calibration scheme {scheme} is not known to this version (it knows {SCHEME})")


class Calibrator:
    """The calibration state of one batch of segments, for ``codec.mgcf.learned``'s step loop:
    ``begin_step`` with the step's real positions, then per channel ``correction(c)`` (given to
    ``codec.mgcf.tables.frequency_tables``) and ``observe(c, values)`` once that channel's symbols are
    known, then ``end_step``."""

    def __init__(self, patch: int, segment_of_patch: torch.Tensor, luts: dict[str, torch.Tensor]):
        dev = segment_of_patch.device
        self.dev, self.luts = dev, luts
        self.seg_of_patch = segment_of_patch.long()
        self.segments = int(segment_of_patch.max()) + 1 if segment_of_patch.numel() else 0
        b, side = segment_of_patch.numel(), patch + 2 * BORDER
        self.y = torch.zeros(b, side, side, 3, dtype=torch.int64, device=dev)
        self.coded = torch.zeros(b, side, side, dtype=torch.int64, device=dev)
        s, n = self.segments, NUM_FEATURES
        self.sum_abs = torch.zeros(s * CONTEXTS, dtype=torch.int64, device=dev)
        self.count = torch.zeros(s * CONTEXTS, dtype=torch.int64, device=dev)
        self.gram = torch.zeros(s, 3, n, n, dtype=torch.int64, device=dev)
        self.cross = torch.zeros(s, 3, n, dtype=torch.int64, device=dev)
        self.energy = torch.zeros(s, 3, dtype=torch.int64, device=dev)
        self.beta = torch.zeros(s, 3, n, dtype=torch.int64, device=dev)
        self.steps = 0
        self.thresholds = torch.tensor(SURPRISE_STEPS, dtype=torch.int64, device=dev)

    # ---- per step ----
    def begin_step(self, rows: torch.Tensor, cols: torch.Tensor, real: torch.Tensor) -> None:
        """The step's positions and which of (patch, position) rows are real, patch-major (the
        coder's row order)."""
        b, n = self.seg_of_patch.numel(), rows.numel()
        real = real.to(self.dev)
        patch = torch.arange(b, device=self.dev).repeat_interleave(n)[real]
        r = rows.to(self.dev).repeat(b)[real] + BORDER
        c = cols.to(self.dev).repeat(b)[real] + BORDER
        self.at = (patch, r, c)
        self.seg = self.seg_of_patch[patch]
        self.nb_y = torch.stack([self.y[patch, r + dr, c + dc] for dr, dc in NEIGHBOURS], 1)  # (N, 6, 3)
        self.nb_coded = torch.stack([self.coded[patch, r + dr, c + dc] for dr, dc in NEIGHBOURS], 1)  # (N, 6)
        rows_n = patch.numel()
        self.own = torch.zeros(rows_n, 3, dtype=torch.int64, device=self.dev)
        self.centre = torch.zeros(rows_n, dtype=torch.int64, device=self.dev)
        self.inv_s = torch.ones(rows_n, dtype=torch.int64, device=self.dev)
        self.shift = torch.zeros(rows_n, dtype=torch.int64, device=self.dev)
        self.context = torch.zeros(rows_n, dtype=torch.int64, device=self.dev)
        # Segment boundaries of the rows (segments are consecutive patches, rows patch-major).
        self.seg_counts = torch.bincount(self.seg, minlength=self.segments).tolist()

    def features(self, channel: int) -> torch.Tensor:
        """(N, NUM_FEATURES) int64: the neighbours' y in every channel, then this pixel's y of the
        channels before ``channel`` (zero for those not coded yet)."""
        own = self.own[:, :2].clone()
        if channel < 2:
            own[:, channel:] = 0
        return torch.cat([self.nb_y.flatten(1), own], 1)

    def correction(self, channel: int):
        features = self.features(channel)
        self.current = features  # observe(channel) regresses on the same features

        def correct(rows: slice, mix: MixtureInts) -> MixtureInts:
            return self._correct(channel, rows, features[rows], mix)

        return correct

    def _correct(self, channel: int, rows: slice, f: torch.Tensor, mix: MixtureInts) -> MixtureInts:
        total = mix.weights.sum(1)
        centre = torch.div((mix.weights * mix.mean).sum(1), total, rounding_mode="floor")
        lbar = torch.div((mix.weights * mix.log_scale).sum(1), total, rounding_mode="floor")
        inv_s = inverse_scale(lbar, self.luts)
        seg = self.seg[rows]
        # Mean: s * beta . f, in 1/64 pixel (beta . f is at 2**-20 of a standardized unit).
        pred = (self.beta[seg, channel] * f).sum(1)
        shift = torch.div(pred * 64, inv_s, rounding_mode="floor").clamp_(-MEAN_SHIFT_LIMIT, MEAN_SHIFT_LIMIT)
        # Scale: the context's ratio of the residuals it expected to those it saw.
        context = self._context(channel, rows, lbar, seg)
        count, sum_abs = self.count[context], self.sum_abs[context]
        ratio = torch.div(
            (count + PRIOR) * LOGISTIC_MAD * RATIO_ONE, sum_abs + PRIOR * LOGISTIC_MAD, rounding_mode="floor"
        ).clamp_(RATIO_MIN, RATIO_MAX)
        inv_scale = torch.div(mix.inv_scale * ratio.unsqueeze(1), RATIO_ONE, rounding_mode="floor")
        self.centre[rows], self.inv_s[rows], self.shift[rows], self.context[rows] = centre, inv_s, shift, context
        mean = (mix.mean + shift.unsqueeze(1)).clamp_(-MEAN_LIMIT, MEAN_LIMIT)
        return MixtureInts(mix.weights, mean, mix.log_scale, inv_scale.clamp_(1, INV_SCALE_LIMIT))

    def _context(self, channel: int, rows: slice, lbar: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        scale_bucket = torch.div(lbar - SCALE_BUCKET_LO, SCALE_BUCKET_WIDTH, rounding_mode="floor")
        scale_bucket = scale_bucket.clamp_(0, SCALE_BUCKETS - 1)
        coded = self.nb_coded[rows]
        total = (self.nb_y[rows, :, channel].abs() * coded).sum(1) + self.own[rows, :channel].abs().sum(1)
        count = coded.sum(1) + channel
        mean_abs = torch.div(total << 16, count.clamp(min=1), rounding_mode="floor")
        surprise = torch.bucketize(mean_abs, self.thresholds, right=True)
        surprise = torch.where(count > 0, surprise, SURPRISE_BUCKETS - 1)
        local = (channel * SCALE_BUCKETS + scale_bucket) * SURPRISE_BUCKETS + surprise
        return seg * CONTEXTS + local

    def observe(self, channel: int, values: torch.Tensor) -> None:
        """Record channel ``channel``'s true values (N,) of the step's real rows."""
        x64 = values.to(self.dev).long() * 64
        y = torch.div((x64 - self.centre) * self.inv_s, 1 << _Y_SHIFT, rounding_mode="floor").clamp_(-Y_LIMIT, Y_LIMIT)
        z = torch.div((x64 - self.centre - self.shift).abs() * self.inv_s, 1 << _Y_SHIFT, rounding_mode="floor")
        self.sum_abs.index_add_(0, self.context, z.clamp_(max=Y_LIMIT))
        self.count.index_add_(0, self.context, torch.ones_like(z))
        f = self.current.double()
        yd = y.double()
        start = 0
        for s, n in enumerate(self.seg_counts):
            if n:
                part = f[start : start + n]
                # Integer products below 2**26 summed over at most 2**13 rows: exact in float64.
                self.gram[s, channel] += (part.T @ part).long()
                self.cross[s, channel] += (part.T @ yd[start : start + n]).long()
                self.energy[s, channel] += int((y[start : start + n] ** 2).sum())
            start += n
        self.own[:, channel] = y

    def end_step(self) -> None:
        """Store the step's residuals for its successors and refit every segment's regression."""
        patch, r, c = self.at
        self.y[patch, r, c] = self.own
        self.coded[patch, r, c] = 1
        self.steps += 1
        if self.steps % SOLVE_EVERY == 0:
            self.beta = solve_ridge(self.gram, self.cross, self.energy)


def solve_ridge(gram: torch.Tensor, cross: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    """beta (…, n) at 2**-BETA_FRAC solving (gram + RIDGE I) beta = cross, in int64 only.

    Each system is first shifted right until its largest diagonal entry and ``energy`` (the sum
    of y**2) are below 2**SOLVE_BITS: the augmented matrix [[A, b], [b', energy]] is a Gram
    matrix, so every entry and every Schur complement stays below that bound, and products below
    2**62. Elimination without pivoting (A is positive definite), floor divisions, pivots at
    least 1, entries clamped to +-2**(SOLVE_BITS + 1) against the rounding's drift."""
    shape, n = gram.shape[:-2], gram.shape[-1]
    a = gram.reshape(-1, n, n) + RIDGE * torch.eye(n, dtype=torch.int64, device=gram.device)
    b = cross.reshape(-1, n).clone()
    largest = torch.maximum(a.diagonal(dim1=1, dim2=2).max(1).values, energy.reshape(-1))
    # Bit length from the float64 exponent: int64 -> float64 is correctly rounded everywhere, so
    # this is the same on every device (a value just under a power of two may round up: one
    # bit more shift, the same on every device).
    bits = torch.frexp(largest.double()).exponent.long()
    shift = (bits - SOLVE_BITS).clamp_(min=0)
    a = a >> shift[:, None, None]
    b = b >> shift[:, None]
    limit = 1 << (SOLVE_BITS + 1)
    for k in range(n - 1):
        pivot = a[:, k, k : k + 1].clamp(min=1)  # (m, 1)
        col = a[:, k + 1 :, k]
        rest = a[:, k + 1 :, k + 1 :]
        rest -= torch.div(col.unsqueeze(2) * a[:, k : k + 1, k + 1 :], pivot.unsqueeze(2), rounding_mode="floor")
        rest.clamp_(-limit, limit)
        b[:, k + 1 :] -= torch.div(col * b[:, k : k + 1], pivot, rounding_mode="floor")
        b.clamp_(-limit, limit)
    beta = torch.zeros_like(b)
    for k in range(n - 1, -1, -1):
        acc = (b[:, k] << BETA_FRAC) - (a[:, k, k + 1 :] * beta[:, k + 1 :]).sum(1)
        beta[:, k] = torch.div(acc, a[:, k, k].clamp(min=1), rounding_mode="floor").clamp_(-BETA_LIMIT, BETA_LIMIT)
    return beta.reshape(*shape, n)
