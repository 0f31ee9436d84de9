"""Batched range coding of integer frequency tables with ``constriction``.

One call codes every symbol of a wavefront step (never one symbol per call). Tables come from
``codec.mgcf.tables``: 256 integers summing to ``2**24 - 256``, passed as float32 (exact: every value
and every partial sum is an integer below 2**24) so constriction's quantizer reproduces them
exactly (see the module docstring there).

A range decoder never runs out by itself: past its last word it decodes zeros for ever (an empty
stream decodes as symbol 0 everywhere). So ``Decoder`` counts the information of what it has
decoded, ``-log2`` of each symbol's coded frequency, and raises ``CorruptFileError`` at the first
call where that exceeds what the stream's words can carry. The bound is exact for any stream an
encoder wrote: the 64-bit state starts with a range below ``2**64``, coding a symbol multiplies it
by at most its frequency, and each emitted 32-bit word multiplies it by ``2**32``; the range never
drops below 1, so the information coded is at most ``32 * words + 64`` bits. The count uses an
upper bound of the frequency constriction's quantizer gives (so it never overestimates), and
legitimate streams come within a few bits of their capacity only at their last symbol (measured).
"""

from __future__ import annotations

import constriction
import numpy as np
import torch

from codec.errors import CorruptFileError

_FAMILY = constriction.stream.model.Categorical(perfect=False)
PRECISION = 24  # constriction's default: frequencies are integers out of 2**24
SLACK_BITS = 64 + 32  # the coder's 64-bit state, and one word of margin


def _fixed_model(table: np.ndarray) -> constriction.stream.model.Categorical:
    return constriction.stream.model.Categorical(np.asarray(table, dtype=np.float32), perfect=False)


def _probabilities(tables: torch.Tensor) -> np.ndarray:
    return tables.to("cpu", torch.float32).numpy()


class Encoder:
    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()

    def encode(self, symbols: torch.Tensor, tables: torch.Tensor) -> None:
        if symbols.numel():
            self._coder.encode(symbols.to("cpu", torch.int32).numpy(), _FAMILY, _probabilities(tables))

    def encode_iid(self, symbols: np.ndarray, table: np.ndarray) -> None:
        """Code many symbols under one table (same quantizer, so the same frequencies)."""
        if len(symbols):
            self._coder.encode(symbols.astype(np.int32), _fixed_model(table))

    def finish(self) -> bytes:
        return self._coder.get_compressed().astype("<u4").tobytes()


def _information(mass: np.ndarray, total: np.ndarray | float, n: int) -> float:
    """A lower bound of the bits that coding symbols took: ``mass`` their entries in their tables
    of ``n`` entries summing to ``total``.

    constriction's fast quantizer gives symbol v of a table q the frequency
    ``floor(C[v+1] s) - floor(C[v] s) + 1`` with ``C`` the cumulative sums and
    ``s = (2**24 - n) / sum(q)``, computed in float32; for integer tables summing below 2**24 (all
    of callic's) the sums are exact and each product is off by at most one unit, so the frequency
    is below ``q[v] s + 4``."""
    freq = mass * ((2**PRECISION - n) / np.maximum(total, 1.0)) * (1 + 1e-6) + 4.0
    return float(np.maximum(PRECISION - np.log2(freq), 0.0).sum())


class Decoder:
    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise CorruptFileError("entropy-coded stream length is not a multiple of 4")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self._coder = constriction.stream.queue.RangeDecoder(words)
        self._capacity = 32.0 * len(words) + SLACK_BITS
        self._bits = 0.0

    def _spend(self, bits: float) -> None:
        """Count the decoded symbols' information; a stream that cannot hold it has run out."""
        self._bits += bits
        if self._bits > self._capacity:
            raise CorruptFileError(
                f"entropy-coded stream of {int(self._capacity - SLACK_BITS) // 8} bytes ends before its last symbol"
            )

    def decode(self, tables: torch.Tensor) -> torch.Tensor:
        if not tables.shape[0]:
            return torch.empty(0, dtype=torch.int64)
        try:
            probabilities = _probabilities(tables)
            symbols = self._coder.decode(_FAMILY, probabilities)
        except Exception as exc:  # constriction reports malformed streams as generic errors
            raise CorruptFileError(f"entropy decoding failed: {exc}") from exc
        mass = probabilities[np.arange(len(symbols)), symbols].astype(np.float64)
        self._spend(_information(mass, probabilities.sum(axis=1, dtype=np.float64), probabilities.shape[1]))
        return torch.from_numpy(symbols.astype(np.int64))

    def decode_iid(self, table: np.ndarray, count: int) -> np.ndarray:
        if not count:
            return np.empty(0, dtype=np.int32)
        try:
            symbols = self._coder.decode(_fixed_model(table), count)
        except Exception as exc:
            raise CorruptFileError(f"entropy decoding failed: {exc}") from exc
        table = np.asarray(table, dtype=np.float64)
        self._spend(_information(table[symbols], table.sum(), len(table)))
        return symbols
