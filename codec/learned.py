"""The learned lossless coder for 8-bit RGB: patches, wavefront steps, segments.

The image is padded to a multiple of the patch size P with mid-grey (128, which the network sees
as 0; padding is never coded) and cut into P x P patches in raster order. Consecutive runs of
``patches_per_stream`` patches form a *segment*, coded as its own range-coded stream: segments
bound the decoder's memory (its caches hold one segment), and could be decoded in parallel.

Within a segment, the stream holds, for each wavefront step in order, the R symbols of every real
pixel of that step (patch-major, then by row), then their G, then their B symbols. A segment
stops after the last step that holds a real pixel.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from codec.entropy import Decoder, Encoder
from codec.errors import CorruptFileError
from codec.exact import ExactMGCF
from codec.tables import frequency_tables
from codec.wavefront import num_steps, step_positions


def _patchify(pixels: np.ndarray, p: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> patches (B, P, P, 3) uint8, padded with 128, in raster order."""
    h, w, _ = pixels.shape
    hp, wp = math.ceil(h / p) * p, math.ceil(w / p) * p
    padded = np.full((hp, wp, 3), 128, dtype=np.uint8)
    padded[:h, :w] = pixels
    patches = padded.reshape(hp // p, p, wp // p, p, 3).transpose(0, 2, 1, 3, 4).reshape(-1, p, p, 3)
    return torch.from_numpy(np.ascontiguousarray(patches))


def _masks(h: int, w: int, p: int, seg: range) -> torch.Tensor:
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


def _code_step(coder, params: torch.Tensor, pixels: torch.Tensor, k: int, luts) -> torch.Tensor:
    """Encode (``pixels`` known) or decode (``pixels`` filled in) one step's R, G, B symbols."""
    for channel in range(3):
        tables = frequency_tables(params, channel, pixels, k, luts)
        if isinstance(coder, Encoder):
            coder.encode(pixels[:, channel], tables)
        else:
            pixels[:, channel] = coder.decode(tables).to(pixels.device)
    return pixels


def encode_rgb(pixels: np.ndarray, model: ExactMGCF, per_stream: int) -> list[bytes]:
    p, k = model.cfg.patch, model.cfg.mixtures
    h, w, _ = pixels.shape
    patches = _patchify(pixels, p)
    streams = []
    for seg in segments(patches.shape[0], per_stream):
        seg_patches, seg_mask = patches[seg.start : seg.stop].long(), _masks(h, w, p, seg)
        params = model.full_params(seg_patches)
        coder = Encoder()
        for step in range(_segment_steps(seg_mask)):
            rows, cols = step_positions(p, step)
            real = seg_mask[:, rows, cols].reshape(-1).to(params.device)
            prm = params[:, rows.to(params.device), cols.to(params.device)].reshape(-1, params.shape[-1])[real]
            pix = seg_patches[:, rows, cols].reshape(-1, 3).to(params.device)[real]
            _code_step(coder, prm, pix, k, model.luts)
        streams.append(coder.finish())
    return streams


def decode_rgb(streams: list[bytes], height: int, width: int, model: ExactMGCF, per_stream: int) -> np.ndarray:
    p, k = model.cfg.patch, model.cfg.mixtures
    nh, nw = math.ceil(height / p), math.ceil(width / p)
    seg_ranges = segments(nh * nw, per_stream)
    if len(seg_ranges) != len(streams):
        raise CorruptFileError(f"expected {len(seg_ranges)} streams, found {len(streams)}")
    out = torch.full((nh * nw, p, p, 3), 128, dtype=torch.uint8)
    for seg, data in zip(seg_ranges, streams, strict=True):
        seg_mask = _masks(height, width, p, seg)
        b = seg_mask.shape[0]
        state = model.step_decoder(b)
        coder = Decoder(data)
        for step in range(_segment_steps(seg_mask)):
            params = state.params(step)
            rows, cols = step_positions(p, step)
            real = seg_mask[:, rows, cols].reshape(-1).to(params.device)
            pix = torch.full((b * rows.numel(), 3), 128, dtype=torch.int64, device=params.device)
            pix[real] = _code_step(coder, params.reshape(-1, params.shape[-1])[real], pix[real], k, model.luts)
            pix = pix.view(b, rows.numel(), 3)
            state.set_pixels(step, pix)
            out[seg.start : seg.stop, rows, cols] = pix.cpu().to(torch.uint8)
    grid = out.numpy().reshape(nh, nw, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(nh * p, nw * p, 3)
    return np.ascontiguousarray(grid[:height, :width])
