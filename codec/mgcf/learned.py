"""The learned lossless coder for 8-bit RGB: patches, wavefront steps, segments.

The image is padded to a multiple of the patch size P with mid-grey (128, which the network sees
as 0; padding is never coded) and cut into P x P patches in raster order. Consecutive runs of
``patches_per_stream`` patches form a *segment*, coded as its own range-coded stream. A segment is
the smallest unit a decoder must hold in memory; the decoder batches as many segments as its
memory budget allows (see Memory below), each with its own range decoder.

Within a segment, the stream holds, for each wavefront step in order, the R symbols of every real
pixel of that step (patch-major, then by row), then their G, then their B symbols. A segment
stops after the last step that holds a real pixel.

Memory: a segment's stream is step-major over all its patches, so a segment is decoded in one
batch, and its state (``ExactMGCF.cache_bytes_per_patch`` per patch: 12.7 MB with the paper's
configuration at P = 64, 50.7 MB at the shipped model's P = 128) must fit the decoder's budget,
``CALLIC_DECODER_MEMORY`` bytes (default 2 GiB: 169 patches at P = 64, 42 at P = 128; the default
patches per stream, 64 and 16, need 0.81 GB). A file whose segments do
not fit is refused before anything is allocated, and the encoder refuses to write one that a
decoder with the default budget would refuse. Batches of several segments are held to the budget
and grow from one segment (``_segment_groups``). Calibration (``codec.mgcf.calibration``) adds its
residual maps, 32 (P + 4)**2 bytes per patch (0.15 MB at P = 64, 1.2% of the caches), and its
per-segment statistics (under 1 MB), outside the budget.

Work: every patch holds a real pixel, so every stream holds at least one word (an empty one is
corrupt before anything is allocated), and ``codec.entropy.Decoder`` raises at the first step
where a stream has decoded more information than its words can hold: a truncated or forged
stream fails after work in proportion to its length, not to the size its header claims.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from codec import defaults
from codec.entropy import Decoder, Encoder
from codec.errors import CorruptFileError, UnsupportedError
from codec.mgcf.calibration import Calibrator, check_scheme
from codec.mgcf.exact import ExactMGCF
from codec.mgcf.tables import frequency_tables
from codec.mgcf.wavefront import num_steps, step_positions


def patchify(pixels: np.ndarray, p: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> patches (B, P, P, 3) uint8, padded with 128, in raster order."""
    h, w, _ = pixels.shape
    hp, wp = math.ceil(h / p) * p, math.ceil(w / p) * p
    padded = np.full((hp, wp, 3), 128, dtype=np.uint8)
    padded[:h, :w] = pixels
    patches = padded.reshape(hp // p, p, wp // p, p, 3).transpose(0, 2, 1, 3, 4).reshape(-1, p, p, 3)
    return torch.from_numpy(np.ascontiguousarray(patches))


def real_masks(h: int, w: int, p: int, seg: range) -> torch.Tensor:
    """Real-pixel masks (len(seg), P, P) of the patches in ``seg``."""
    per_row = math.ceil(w / p)
    idx = torch.arange(seg.start, seg.stop)
    rows_left = (h - (idx // per_row) * p).clamp(max=p)
    cols_left = (w - (idx % per_row) * p).clamp(max=p)
    r = torch.arange(p)
    return (r[None, :, None] < rows_left[:, None, None]) & (r[None, None, :] < cols_left[:, None, None])


def segments(num_patches: int, per_stream: int) -> list[range]:
    return [range(s, min(s + per_stream, num_patches)) for s in range(0, num_patches, per_stream)]


def _segment_steps(mask: torch.Tensor) -> int:
    """Steps needed for a segment: up to the last group holding a real pixel in any patch."""
    heights = mask.any(2).sum(1)
    widths = mask.any(1).sum(1)
    return max(num_steps(int(h), int(w)) for h, w in zip(heights, widths, strict=True))


def stream_count(height: int, width: int, patch: int, per_stream: int) -> int:
    return math.ceil(math.ceil(height / patch) * math.ceil(width / patch) / per_stream)


def segment_memory(height: int, width: int, model: ExactMGCF, per_stream: int) -> int:
    """Bytes of caches the largest segment of this layout needs (it is decoded in one batch)."""
    p = model.cfg.patch
    return min(per_stream, math.ceil(height / p) * math.ceil(width / p)) * model.cache_bytes_per_patch()


def check_segment_memory(height: int, width: int, model: ExactMGCF, per_stream: int, budget: int) -> None:
    """Refuse a layout whose segments do not fit ``budget`` bytes, saying what would."""
    need = segment_memory(height, width, model, per_stream)
    if need > budget:
        raise UnsupportedError(
            f"decoding needs {need / 2**20:.0f} MiB for one segment of {per_stream} patches, more than the "
            f"decoder's budget of {budget / 2**20:.0f} MiB (set CALLIC_DECODER_MEMORY to a number of bytes to "
            "raise it, or encode with fewer patches per stream)"
        )


def _code_step(
    coders: list,
    counts: list[int],
    params: torch.Tensor,
    pixels: torch.Tensor,
    k: int,
    luts,
    calibrator: Calibrator | None = None,
) -> None:
    """Code one step's R, G, B symbols: ``params``/``pixels`` hold the real rows of consecutive
    segments, ``counts[i]`` of them for ``coders[i]``. Encoders read ``pixels``; decoders fill them in.
    Tables are computed once for all rows, then split among the coders. With a ``calibrator``
    (whose ``begin_step`` has been called), its corrections shape the tables and each channel's
    values are shown to it once known: the same calls in the same order on both sides."""
    for channel in range(3):
        correct = calibrator.correction(channel) if calibrator is not None else None
        tables = frequency_tables(params, channel, pixels, k, luts, correct).split(counts)
        if isinstance(coders[0], Encoder):
            for coder, rows, t in zip(coders, pixels[:, channel].split(counts), tables, strict=True):
                coder.encode(rows, t)
        else:
            decoded = [coder.decode(t) for coder, t in zip(coders, tables, strict=True)]
            pixels[:, channel] = torch.cat(decoded).to(pixels.device)
        if calibrator is not None:
            calibrator.observe(channel, pixels[:, channel])
    if calibrator is not None:
        calibrator.end_step()


def _calibrator(scheme: int, model: ExactMGCF, num_patches: int, local: list[slice]) -> Calibrator | None:
    """A batch's calibration state (``codec.mgcf.calibration``), or None for scheme 0 (none)."""
    if not scheme:
        return None
    check_scheme(scheme)
    segment_of_patch = torch.zeros(num_patches, dtype=torch.int64)
    for i, sl in enumerate(local):
        segment_of_patch[sl] = i
    return Calibrator(model.cfg.patch, segment_of_patch.to(model.device), model.luts)


def _segment_groups(seg_ranges: list[range], max_patches: int) -> list[list[int]]:
    """Consecutive segments batched together, up to ``max_patches`` patches (at least one segment).

    The first batch is one segment and each next one holds at most twice the patches of the one
    before: the first step of a batch costs in proportion to its size, so a file whose streams run
    out at once fails after one segment's work, not after a whole budget's."""
    groups: list[list[int]] = []
    limit = 0
    for i, seg in enumerate(seg_ranges):
        if groups and seg.stop - seg_ranges[groups[-1][0]].start <= limit:
            groups[-1].append(i)
            continue
        if groups:
            limit = min(max_patches, 2 * (seg_ranges[groups[-1][-1]].stop - seg_ranges[groups[-1][0]].start))
        groups.append([i])
    return groups


def _batches(height: int, width: int, model: ExactMGCF, per_stream: int, max_patches: int | None):
    """Yield (patch range, real-pixel masks, per-segment local slices, segment indices) per batch."""
    p = model.cfg.patch
    seg_ranges = segments(math.ceil(height / p) * math.ceil(width / p), per_stream)
    budget_patches = max(1, defaults.DECODER_BATCH_BYTES // model.cache_bytes_per_patch())
    max_patches = budget_patches if max_patches is None else min(max_patches, budget_patches)
    for group in _segment_groups(seg_ranges, max_patches):
        first = seg_ranges[group[0]].start
        batch = range(first, seg_ranges[group[-1]].stop)
        local = [slice(seg_ranges[i].start - first, seg_ranges[i].stop - first) for i in group]
        yield batch, real_masks(height, width, p, batch), local, group


def _step_rows(mask: torch.Tensor, local: list[slice], p: int, step: int, device):
    """Positions of ``step``, which of the batch's rows are real pixels (patch-major order, the
    order of the streams), and how many of them belong to each segment."""
    rows, cols = step_positions(p, step)
    real_mask = mask[:, rows, cols]
    counts = [int(real_mask[sl].sum()) for sl in local]
    return rows, cols, real_mask.reshape(-1).to(device), counts


def encode_rgb(
    pixels: np.ndarray,
    model: ExactMGCF,
    per_stream: int,
    max_patches: int | None = None,
    timings: dict[str, float] | None = None,
    calibration: int = 0,
) -> list[bytes]:
    """One parallel pass per batch of segments, then every step's symbols into each segment's stream.
    ``timings`` (if given) accumulates seconds in ``exact_pass_s`` and ``coding_s``. Layouts that a
    decoder with the default budget would refuse are refused here (``UnsupportedError``).
    ``calibration``: the ``codec.mgcf.calibration`` scheme (0: none), which the file must record."""
    p, k = model.cfg.patch, model.cfg.mixtures
    h, w, _ = pixels.shape
    check_segment_memory(h, w, model, per_stream, min(defaults.DECODER_BATCH_BYTES, defaults.DEFAULT_DECODER_MEMORY))
    patches = patchify(pixels, p)
    streams = []
    clock = timings if timings is not None else {}
    for batch, mask, local, _ in _batches(h, w, model, per_stream, max_patches):
        start = time.perf_counter()
        batch_patches = patches[batch.start : batch.stop].long()
        params = model.full_params(batch_patches)
        if params.is_cuda:
            torch.cuda.synchronize(params.device)
        middle = time.perf_counter()
        clock["exact_pass_s"] = clock.get("exact_pass_s", 0.0) + middle - start
        coders = [Encoder() for _ in local]
        calibrator = _calibrator(calibration, model, len(batch), local)
        for step in range(_segment_steps(mask)):
            rows, cols, real, counts = _step_rows(mask, local, p, step, params.device)
            prm = params[:, rows.to(params.device), cols.to(params.device)].reshape(-1, params.shape[-1])[real]
            pix = batch_patches[:, rows, cols].reshape(-1, 3).to(params.device)[real]
            if calibrator is not None:
                calibrator.begin_step(rows, cols, real)
            _code_step(coders, counts, prm, pix, k, model.luts, calibrator)
        streams += [coder.finish() for coder in coders]
        clock["coding_s"] = clock.get("coding_s", 0.0) + time.perf_counter() - middle
    return streams


def decode_rgb(
    streams: list[bytes],
    height: int,
    width: int,
    model: ExactMGCF,
    per_stream: int,
    max_patches: int | None = None,
    calibration: int = 0,
) -> np.ndarray:
    """Decode all segments, batching as many patches per step as ``max_patches`` (default: what
    ``codec.defaults.DECODER_BATCH_BYTES`` of caches hold); each segment keeps its own range decoder.
    ``calibration``: the scheme the file records (0: none)."""
    p, k = model.cfg.patch, model.cfg.mixtures
    nh, nw = math.ceil(height / p), math.ceil(width / p)
    expected = stream_count(height, width, p, per_stream)
    if len(streams) != expected:
        raise CorruptFileError(f"expected {expected} streams, found {len(streams)}")
    check_segment_memory(height, width, model, per_stream, defaults.DECODER_BATCH_BYTES)
    for i, stream in enumerate(streams):
        if not stream or len(stream) % 4:
            raise CorruptFileError(f"stream {i} holds {len(stream)} bytes: not a whole number of 32-bit words >= 1")
    # Untouched pages cost nothing: a file that fails early never fills this. Every real pixel is
    # written below; padding is cropped away.
    out = torch.empty((nh * nw, p, p, 3), dtype=torch.uint8)
    for batch, mask, local, group in _batches(height, width, model, per_stream, max_patches):
        coders = [Decoder(streams[i]) for i in group]
        state = model.step_decoder(len(batch))
        calibrator = _calibrator(calibration, model, len(batch), local)
        for step in range(_segment_steps(mask)):
            params = state.params(step)
            rows, cols, real, counts = _step_rows(mask, local, p, step, params.device)
            pix = torch.full((real.shape[0], 3), 128, dtype=torch.int64, device=params.device)
            decoded = pix[real]
            if calibrator is not None:
                calibrator.begin_step(rows, cols, real)
            _code_step(coders, counts, params.reshape(-1, params.shape[-1])[real], decoded, k, model.luts, calibrator)
            pix[real] = decoded
            pix = pix.view(len(batch), rows.numel(), 3)
            state.set_pixels(step, pix)
            out[batch.start + torch.arange(len(batch))[:, None], rows[None, :], cols[None, :]] = pix.cpu().to(
                torch.uint8
            )
    grid = out.numpy().reshape(nh, nw, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(nh * p, nw * p, 3)
    return np.ascontiguousarray(grid[:height, :width])
