"""Batched range coding of integer frequency tables with ``constriction``.

One call codes every symbol of a wavefront step (never one symbol per call). Tables come from
``codec.tables``: 256 integers summing to ``2**24 - 256``, passed as float32 (exact: every value
and every partial sum is an integer below 2**24) so constriction's quantizer reproduces them
exactly (see the module docstring there).
"""

from __future__ import annotations

import constriction
import numpy as np
import torch

from codec.errors import CorruptFileError

_FAMILY = constriction.stream.model.Categorical(perfect=False)


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


class Decoder:
    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise CorruptFileError("entropy-coded stream length is not a multiple of 4")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self._coder = constriction.stream.queue.RangeDecoder(words)

    def decode(self, tables: torch.Tensor) -> torch.Tensor:
        if not tables.shape[0]:
            return torch.empty(0, dtype=torch.int64)
        try:
            symbols = self._coder.decode(_FAMILY, _probabilities(tables))
        except Exception as exc:  # constriction reports malformed streams as generic errors
            raise CorruptFileError(f"entropy decoding failed: {exc}") from exc
        return torch.from_numpy(symbols.astype(np.int64))

    def decode_iid(self, table: np.ndarray, count: int) -> np.ndarray:
        if not count:
            return np.empty(0, dtype=np.int32)
        try:
            return self._coder.decode(_fixed_model(table), count)
        except Exception as exc:
            raise CorruptFileError(f"entropy decoding failed: {exc}") from exc
