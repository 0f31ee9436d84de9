"""The exact (integer) MGCF: one parallel pass for the encoder, Cache then Crop Inference for
the decoder (CALLIC section 3), producing bit-identical mixture parameters on any device.

Both paths are built from the same pointwise pieces (``_embed``, ``_block_pre``, ``_block_post``,
``_head``) applied to rows of positions; they differ only in how the two masked convolutions get
their neighbourhoods:

- ``full_params``: all positions of a batch of patches at once; each masked convolution is a sum
  of shifted copies of its (zero-padded) input.
- ``StepDecoder``: one wavefront group at a time; the input of each masked convolution is cached
  for the whole patch and the visible taps of the new positions are gathered from the cache.

Either way each output is the same sum of the same integer products, and integer sums below 2**53
are exact in float64 in any order, so the two paths agree bit for bit (a test checks it).
"""

from __future__ import annotations

import torch

from codec.fixedpoint import (
    ACT_FRAC,
    ACT_LIMIT,
    activation,
    layer_norm,
    requantize,
)
from codec.mgcf.config import MGCFConfig
from codec.mgcf.wavefront import kernel_offsets, step_positions

PATCH_CHUNK_POSITIONS = 8192  # positions per chunk of the encoder's parallel pass
ROW_SLICE = 2048  # rows per slice of the pointwise layers


class ExactMGCF:
    def __init__(
        self,
        cfg: MGCFConfig,
        tensors: dict[str, torch.Tensor],
        luts: dict[str, torch.Tensor],
        device: str | torch.device = "cpu",
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        self.t = {k: v.to(self.device, torch.float64) for k, v in tensors.items()}
        # Tables hold integers below 2**25: float64 keeps them exact and multiplies without casts.
        self.luts = {k: v.to(self.device, torch.float64) for k, v in luts.items()}
        self.embed_taps = kernel_offsets(3, strict=True)
        self.dw_taps = kernel_offsets(cfg.kernel, strict=False)
        self.dw_weight = [self.t[f"blocks.{i}.dw.weight"] for i in range(cfg.depth)]  # (taps, C)

    def to(self, device: str | torch.device) -> ExactMGCF:
        """The same model on another device (the integers do not change)."""
        return ExactMGCF(self.cfg, self.t, self.luts, device)

    # ---- pointwise pieces, on rows (N, C) ----
    def _linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return requantize(torch.addmm(self.t[name + ".bias"], x, self.t[name + ".weight"]))

    def _embed(self, taps: torch.Tensor) -> torch.Tensor:
        return self._linear("embed", taps)

    def _block_pre(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = f"blocks.{i}."
        h = layer_norm(x, self.t[p + "norm1.weight"], self.t[p + "norm1.bias"])
        return h, self._linear(p + "gate_a", h)

    def _block_post(self, i: int, x: torch.Tensor, h: torch.Tensor, dw_acc: torch.Tensor) -> torch.Tensor:
        p = f"blocks.{i}."
        a = requantize(dw_acc + self.t[p + "dw.bias"])
        gated = requantize(activation(a, self.luts["silu"]).mul_(self._linear(p + "gate_v", h)), ACT_FRAC)
        x = (x + self._linear(p + "gate_o", gated)).clamp_(-ACT_LIMIT, ACT_LIMIT)
        h2 = layer_norm(x, self.t[p + "norm2.weight"], self.t[p + "norm2.bias"])
        u = activation(self._linear(p + "fc1", h2), self.luts["gelu"])
        return x.add_(self._linear(p + "fc2", u)).clamp_(-ACT_LIMIT, ACT_LIMIT)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear("head", x)

    # ---- encoder: one parallel pass ----
    @torch.no_grad()
    def full_params(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches (B, P, P, 3) of pixel values -> mixture parameters (B, P, P, 10K), integers."""
        b, p = patches.shape[0], self.cfg.patch
        chunk = max(1, PATCH_CHUNK_POSITIONS // (p * p))
        out = [self._full_chunk(patches[s : s + chunk]) for s in range(0, b, chunk)]
        return torch.cat(out) if out else torch.empty(0, p, p, self.cfg.head_channels, dtype=torch.float64)

    def _full_chunk(self, patches: torch.Tensor) -> torch.Tensor:
        b, p, c = patches.shape[0], self.cfg.patch, self.cfg.width
        x_in = (patches.to(self.device, torch.float64) - 128.0) * 64.0
        padded = torch.nn.functional.pad(x_in, (0, 0, 1, 1, 1, 1))
        taps = torch.cat([padded[:, 1 + dr : 1 + dr + p, 1 + dc : 1 + dc + p, :] for dr, dc in self.embed_taps], -1)
        x = _by_rows(self._embed, taps.reshape(b * p * p, -1))
        r = self.cfg.kernel // 2
        for i in range(self.cfg.depth):
            h, a = _by_rows(lambda rows, i=i: self._block_pre(i, rows), x)
            a_pad = torch.nn.functional.pad(a.view(b, p, p, c), (0, 0, r, r, r, r))
            acc = torch.zeros(b, p, p, c, dtype=torch.float64, device=self.device)
            for (dr, dc), w in zip(self.dw_taps, self.dw_weight[i], strict=True):
                acc.addcmul_(a_pad[:, r + dr : r + dr + p, r + dc : r + dc + p, :], w)
            x = _by_rows(lambda *rows, i=i: self._block_post(i, *rows), x, h, acc.view(b * p * p, c))
        return _by_rows(self._head, x).view(b, p, p, -1)

    def cache_bytes_per_patch(self) -> int:
        """Bytes of ``StepDecoder`` state per patch: the caches (P*P positions and a zero row, per
        block) and the decoded pixels with their zero border."""
        p = self.cfg.patch
        return 8 * ((p * p + 1) * self.cfg.width * self.cfg.depth + (p + 2) ** 2 * 3)

    def step_decoder(self, num_patches: int) -> StepDecoder:
        return StepDecoder(self, num_patches)


def _by_rows(fn, *tensors: torch.Tensor):
    """Apply a row-wise ``fn`` in slices of ROW_SLICE rows: the lookup tables' gathers and the
    elementwise passes run several times faster on operands that stay in the CPU's caches."""
    parts = [fn(*(t[s : s + ROW_SLICE] for t in tensors)) for s in range(0, tensors[0].shape[0], ROW_SLICE)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(group) for group in zip(*parts, strict=True))
    return torch.cat(parts)


class StepDecoder:
    """Cache then Crop Inference: computes group after group, only at that group's positions.

    Call ``params(step)`` to get the mixture parameters of the step's positions (every earlier
    group's pixels must be set), then ``set_pixels(step, pixels)`` once they are decoded.

    Each cache is position-major, (P*P + 1, B, C): the P*P positions in raster order, then one
    zero row that every tap outside the patch reads. It is allocated with ``torch.empty``: a tap
    of group g reads a group <= g, groups are computed in order, and a whole group is written
    before any of it is read; so no row is read before it is written, and the pages of positions
    not reached yet are never touched (a file that fails after a few steps costs little memory).
    """

    def __init__(self, model: ExactMGCF, num_patches: int):
        self.m = model
        cfg = model.cfg
        self.b, self.p, self.c = num_patches, cfg.patch, cfg.width
        dev = model.device
        self.pixels = torch.zeros(self.b, self.p + 2, self.p + 2, 3, dtype=torch.float64, device=dev)
        # Cached inputs of the masked depth-wise convs; row P*P is the zero outside the patch.
        self.zero_row = self.p * self.p
        self.caches = [
            torch.empty(self.zero_row + 1, self.b, self.c, dtype=torch.float64, device=dev) for _ in range(cfg.depth)
        ]
        for cache in self.caches:
            cache[self.zero_row].zero_()

    def positions(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = step_positions(self.p, step)
        return rows.to(self.m.device), cols.to(self.m.device)

    @torch.no_grad()
    def params(self, step: int) -> torch.Tensor:
        """Mixture parameters (B, n, 10K) of group ``step``'s n positions in every patch."""
        m, b, c, p = self.m, self.b, self.c, self.p
        rows, cols = self.positions(step)
        n = rows.numel()
        taps = torch.cat([self.pixels[:, rows + 1 + dr, cols + 1 + dc, :] for dr, dc in m.embed_taps], -1)
        x = m._embed(taps.reshape(b * n, -1))
        centre = rows * p + cols
        tap_rows = [self._tap_rows(rows + dr, cols + dc) for dr, dc in m.dw_taps]
        for i in range(m.cfg.depth):
            h, a = m._block_pre(i, x)
            cache = self.caches[i]
            cache[centre] = a.view(b, n, c).transpose(0, 1)
            # One tap at a time keeps the temporaries small enough to stay in cache.
            acc = torch.zeros(n, b, c, dtype=torch.float64, device=m.device)
            for index, w in zip(tap_rows, m.dw_weight[i], strict=True):
                acc.add_(torch.index_select(cache, 0, index).mul_(w))
            x = m._block_post(i, x, h, acc.transpose(0, 1).reshape(b * n, c))
        return m._head(x).view(b, n, -1)

    def _tap_rows(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Cache rows of positions (rows, cols): the zero row where they fall outside the patch."""
        inside = (rows >= 0) & (rows < self.p) & (cols >= 0) & (cols < self.p)
        return torch.where(inside, rows * self.p + cols, self.zero_row)

    def set_pixels(self, step: int, pixels: torch.Tensor) -> None:
        """Record the decoded pixels (B, n, 3) of group ``step``."""
        rows, cols = self.positions(step)
        self.pixels[:, rows + 1, cols + 1, :] = (pixels.to(self.m.device, torch.float64) - 128.0) * 64.0
