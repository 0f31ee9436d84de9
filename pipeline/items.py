"""What the pipeline asks of a codec, without knowing anything about models.

A job hands the pipeline a picklable ``CodecFactory``; every worker process calls it once (loading
its model once) and then feeds it batches of source files. The codec returns, per file, the bytes
to store and the manifest fields it knows about, or the exception that explains why the file
cannot be archived. On restore it turns stored bytes (and the manifest row) back into the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Encoded:
    """Stored bytes of one source file, the name suffix of its object in one-object-per-image mode
    (e.g. ``.cllc``), and manifest fields (``pipeline.manifest`` columns)."""

    blob: bytes
    suffix: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resources:
    """What the worker was given: a device name for torch ("cpu", "cuda") and a thread count."""

    device: str
    threads: int


class ItemCodec(Protocol):
    batch_size: int
    model_hash: str

    def encode_batch(self, items: list[tuple[str, bytes]], verify: bool) -> list[Encoded | BaseException]:
        """(source key, file bytes) -> per item what to store, or why it cannot be archived."""
        ...

    def restore(self, blob: bytes, row: dict[str, Any]) -> bytes:
        """Stored bytes and their manifest row -> the original file's bytes (same format), checked
        against the row's hashes; raises rather than return anything else."""
        ...


class CodecFactory(Protocol):
    def __call__(self, resources: Resources) -> ItemCodec: ...
