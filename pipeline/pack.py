"""Packed shard objects: one object holding a shard's compressed images back to back.

Why: object stores charge per request and cold tiers add tens of KB of overhead to every object,
so a million 40 KB files cost far more as a million objects than as a few thousand packs. The
manifest records each image's offset and length, so restoring one image is one ranged read; the
pack also carries its own index, so it can be read even without the manifest.

Layout (little-endian)::

    "CLPK" | u16 version 1 | entries, back to back
    index: UTF-8 JSON list of [name, offset, length, sha256 hex]
    u64 index offset | u64 index length | "CLPK"
"""

from __future__ import annotations

import hashlib
import json
import struct

from codec.errors import CorruptFileError

MAGIC = b"CLPK"
VERSION = 1
_HEAD = MAGIC + struct.pack("<H", VERSION)
_TAIL = struct.Struct("<QQ4s")
MAX_INDEX_BYTES = 64 << 20


class PackWriter:
    """Collects entries in memory (a shard's worth) and gives the object's bytes at the end."""

    def __init__(self) -> None:
        self._parts: list[bytes] = [_HEAD]
        self._size = len(_HEAD)
        self.index: list[tuple[str, int, int, str]] = []

    def add(self, name: str, data: bytes) -> tuple[int, int]:
        """Append ``data``; returns its (offset, length) in the pack."""
        offset = self._size
        self._parts.append(data)
        self._size += len(data)
        self.index.append((name, offset, len(data), hashlib.sha256(data).hexdigest()))
        return offset, len(data)

    def __len__(self) -> int:
        return len(self.index)

    def getvalue(self) -> bytes:
        index = json.dumps(self.index, separators=(",", ":")).encode()
        return b"".join([*self._parts, index, _TAIL.pack(self._size, len(index), MAGIC)])


def read_index(data: bytes) -> list[tuple[str, int, int, str]]:
    """The index of a whole pack object; checks the frame before trusting any number in it."""
    if len(data) < len(_HEAD) + _TAIL.size or not data.startswith(MAGIC):
        raise CorruptFileError("not a callic pack (bad signature or too short)")
    if data[4:6] != _HEAD[4:6]:
        raise CorruptFileError(f"unsupported pack version {struct.unpack('<H', data[4:6])[0]}")
    offset, length, magic = _TAIL.unpack_from(data, len(data) - _TAIL.size)
    if magic != MAGIC or length > MAX_INDEX_BYTES or offset + length + _TAIL.size != len(data):
        raise CorruptFileError("pack trailer is damaged")
    try:
        index = [tuple(e) for e in json.loads(data[offset : offset + length])]
    except ValueError as exc:
        raise CorruptFileError(f"pack index is damaged: {exc}") from exc
    for name, start, size, _digest in index:
        if not (isinstance(name, str) and len(_HEAD) <= start and start + size <= offset and size >= 0):
            raise CorruptFileError(f"pack index entry {name!r} points outside the pack")
    return index


def entry(data: bytes, name: str) -> bytes:
    """One entry of a whole pack object, checked against its digest."""
    for n, start, size, digest in read_index(data):
        if n == name:
            blob = data[start : start + size]
            if hashlib.sha256(blob).hexdigest() != digest:
                raise CorruptFileError(f"pack entry {name!r} does not match its digest")
            return blob
    raise KeyError(name)
