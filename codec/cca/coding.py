"""Encode and decode one RGB image with a CCA model: latents in, range-coded bytes out, and the
exact reconstruction both sides agree on.

Stream order (one range-coded stream; the decoder needs nothing else but the image size):
z channel by channel (each under its own factorized table), then slice by slice the symbols
v = round(y - mu), grouped by the Gaussian table of their predicted scale, in ascending table
order, each group in (channel, row, column) order.

Memory: both sides hold the whole image's activations (in float64 on the exact path), so a
header's size, not the stream, sets what decoding costs; sizes whose estimated peak
(``DECODE_BYTES_PER_PIXEL``) exceeds the decoder's budget (``CALLIC_DECODER_MEMORY``, the learned
coder's, ``codec.mgcf.learned``) are refused before any work, by the encoder too, so that it writes no
file a default decoder refuses. A stream that runs out fails where it does (``codec.entropy``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from codec import defaults
from codec.cca.bitstream import decode_group, encode_group
from codec.cca.exact import ONE, ExactCCA, exact_kernels, exact_tensors
from codec.cca.model import CCAModel, pad_to
from codec.cca.tables import scale_thresholds
from codec.cca.weights import CCAModelFile
from codec.entropy import Decoder, Encoder
from codec.errors import CorruptFileError, UnsupportedError
from codec.fixedpoint import ACT_LIMIT

STRIDE = 64  # g_a then h_a halve the size six times
Z_LIMIT = 1 << 20
# Peak RSS of a decode grows by 1.37 KB per pixel with the shipped (small) rate points, measured in
# fresh processes at 128 x 128 and 512 x 512; 2 GiB thus decodes up to 1.5 megapixels.
DECODE_BYTES_PER_PIXEL = 1400


def check_memory(height: int, width: int, budget: int | None = None) -> None:
    """Refuse an image size whose decode would need more than ``budget`` bytes (default: the
    decoder's budget) before anything is allocated."""
    budget = defaults.DECODER_BATCH_BYTES if budget is None else budget
    need = height * width * DECODE_BYTES_PER_PIXEL
    if need > budget:
        raise UnsupportedError(
            f"a lossy {height}x{width} image needs about {need / 2**30:.1f} GiB to decode, more than the decoder's "
            f"budget of {budget / 2**30:.1f} GiB (set CALLIC_DECODER_MEMORY to a number of bytes to raise it)"
        )


@dataclass
class LossyModel:
    """A loaded CCA model file: what an encoder and a decoder need, on one device."""

    file: CCAModelFile
    device: torch.device

    @property
    def digest(self) -> bytes:
        return self.file.digest

    @cached_property
    def float_model(self) -> CCAModel:
        return self.file.float_model().to(self.device)

    @cached_property
    def exact(self) -> ExactCCA:
        """The integer decoder, derived from the float model already loaded (not loaded again); a
        model whose integer products could leave the exact range is a damaged file, not a traceback."""
        try:
            return ExactCCA(self.file.cfg, exact_tensors(self.float_model), self.file.group("lut"), self.device)
        except ValueError as exc:  # codec.fixedpoint.check_bounds
            raise CorruptFileError(f"{self.file.source}: weights outside the exact path's bounds: {exc}") from exc

    @cached_property
    def y_tables(self) -> list[torch.Tensor]:
        return self.file.y_tables()

    @cached_property
    def z_tables(self) -> tuple[list[torch.Tensor], list[int]]:
        tables, lows = self.file.z_tables()
        return tables, lows.tolist()

    @cached_property
    def thresholds(self) -> torch.Tensor:
        return scale_thresholds()[:-1].to(self.device)


def _latent_shape(height: int, width: int, stride: int) -> tuple[int, int]:
    return -(-height // stride), -(-width // stride)


def _y_low(table: torch.Tensor) -> int:
    return -((table.numel() - 3) // 2)


def encode(model: LossyModel, pixels: np.ndarray) -> tuple[bytes, np.ndarray]:
    """(H, W, 3) uint8 -> (coded latents, the reconstruction every decoder will produce)."""
    h, w = pixels.shape[:2]
    check_memory(h, w, min(defaults.DECODER_BATCH_BYTES, defaults.DEFAULT_DECODER_MEMORY))
    x = torch.from_numpy(np.array(pixels, copy=True)).to(model.device).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = model.float_model.g_a(pad_to(x, STRIDE))
        z = model.float_model.h_a(y)
    z_sym = torch.round(z).clamp_(-Z_LIMIT, Z_LIMIT).long()
    enc = Encoder()
    ztabs, zlows = model.z_tables
    for c in range(z_sym.shape[1]):
        encode_group(enc, z_sym[0, c], ztabs[c], zlows[c])
    e = model.exact
    with torch.no_grad(), exact_kernels():
        hyper_mean, hyper_scale = e.hyper(z_sym.double())
        decoded: list[torch.Tensor] = []
        for i, y_i in enumerate(model.float_model.split(y)):
            mu, sigma, support = e.slice_params(i, hyper_mean, hyper_scale, decoded)
            y_fx = torch.round(y_i.double() * ONE).clamp_(-ACT_LIMIT, ACT_LIMIT)
            v = torch.floor((y_fx - mu + ONE // 2) / ONE)
            _code_slice(enc, model, v.long(), torch.bucketize(sigma, model.thresholds))
            decoded.append(e.lrp(i, support, (v * ONE + mu).clamp_(-ACT_LIMIT, ACT_LIMIT)))
        recon = e.synthesize(torch.cat(decoded, 1))[0, :h, :w]
    return enc.finish(), recon.cpu().numpy()


def _code_slice(enc: Encoder, model: LossyModel, v: torch.Tensor, index: torch.Tensor) -> None:
    flat_v, flat_i = v.reshape(-1).cpu(), index.reshape(-1).cpu()
    for k in torch.unique(flat_i).tolist():
        table = model.y_tables[k]
        encode_group(enc, flat_v[flat_i == k], table, _y_low(table))


def decode(model: LossyModel, data: bytes, height: int, width: int) -> np.ndarray:
    """Coded latents of an ``height`` x ``width`` image -> its (H, W, 3) uint8 reconstruction."""
    cfg = model.file.cfg
    check_memory(height, width)
    dec = Decoder(data)
    zh, zw = _latent_shape(height, width, STRIDE)
    ztabs, zlows = model.z_tables
    z = torch.stack([decode_group(dec, zh * zw, ztabs[c], zlows[c]).reshape(zh, zw) for c in range(cfg.z_channels)])
    e = model.exact
    with torch.no_grad(), exact_kernels():
        hyper_mean, hyper_scale = e.hyper(z[None].to(model.device, torch.float64))
        decoded: list[torch.Tensor] = []
        for i in range(cfg.slices):
            mu, sigma, support = e.slice_params(i, hyper_mean, hyper_scale, decoded)
            index = torch.bucketize(sigma, model.thresholds).reshape(-1).cpu()
            v = torch.empty(index.numel(), dtype=torch.int64)
            for k in torch.unique(index).tolist():
                table = model.y_tables[k]
                mask = index == k
                v[mask] = decode_group(dec, int(mask.sum()), table, _y_low(table))
            v = v.reshape(mu.shape).to(model.device, torch.float64)
            decoded.append(e.lrp(i, support, (v * ONE + mu).clamp_(-ACT_LIMIT, ACT_LIMIT)))
        recon = e.synthesize(torch.cat(decoded, 1))[0, :height, :width]
    return recon.cpu().numpy()
