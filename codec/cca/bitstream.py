"""Range coding of integer latents under the stored tables, with escapes for the tails.

A group of values shares one table of n symbols: escape low, the n - 2 inner values starting at
``low``, escape high (see ``codec.cca.tables``). All symbols of a group are coded in one call;
after them, for each escaped value in order, its distance beyond the inner range minus one as an
order-0 Exp-Golomb code, one fair bit at a time. The decoder rebuilds the same groups from what it
has already decoded, so nothing else is sent.
"""

from __future__ import annotations

import numpy as np
import torch

from codec.entropy import Decoder, Encoder
from codec.errors import CorruptFileError

_BIT = np.array([(1 << 23) - 1, (1 << 23) - 1], dtype=np.float32)  # two symbols, 1/2 each
MAX_ESCAPE_BITS = 30  # distances < 2**30: far beyond any latent (activations are < 2**10)


def encode_group(enc: Encoder, values: torch.Tensor, table: torch.Tensor, low: int) -> None:
    """Code ``values`` (int64, flattened in order) under one table whose inner values start at ``low``."""
    v = values.reshape(-1).cpu().numpy().astype(np.int64)
    if not v.size:
        return
    high = low + table.numel() - 3
    enc.encode_iid(np.clip(v - low + 1, 0, table.numel() - 1), table.numpy().astype(np.float32))
    beyond = np.where(v < low, low - 1 - v, v - high - 1)
    for m in beyond[(v < low) | (v > high)].tolist():
        n = (m + 1).bit_length() - 1
        enc.encode_iid(np.array([0] * n + [int(b) for b in bin(m + 1)[2:]]), _BIT)


def decode_group(dec: Decoder, count: int, table: torch.Tensor, low: int) -> torch.Tensor:
    """The ``count`` values coded by ``encode_group`` with this table, as int64."""
    if not count:
        return torch.empty(0, dtype=torch.int64)
    last = table.numel() - 1
    symbols = dec.decode_iid(table.numpy().astype(np.float32), count).astype(np.int64)
    values = symbols + low - 1
    for j in np.nonzero((symbols == 0) | (symbols == last))[0].tolist():
        n = 0
        while int(dec.decode_iid(_BIT, 1)[0]) == 0:
            n += 1
            if n > MAX_ESCAPE_BITS:
                raise CorruptFileError("escape code too long: the latent stream is corrupt")
        m = (1 << n) - 1 + sum(int(b) << (n - 1 - i) for i, b in enumerate(dec.decode_iid(_BIT, n)))
        values[j] = low - 1 - m if symbols[j] == 0 else low + last - 1 + m
    return torch.from_numpy(values)
