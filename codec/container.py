"""The ``.cllc`` container: a signature, a version, and CRC-checked sections.

::

    signature  8 bytes   b"CLLC\\r\\n\\x1a\\n"  (catches text-mode and 7-bit transfer damage)
    version    u16 LE    FORMAT_VERSION (2); version 1 files are read too (their pixel hash covers
                         the pixels only, ``codec.raster.pixel_hash``; v2's covers how they are shown)
    section*   tag (4 ASCII bytes) | length u32 LE | payload | CRC-32 u32 LE of tag+length+payload
               the first section is HEAD, the last is "END " (empty payload), nothing follows it

A tag whose first letter is upper case is *critical*: a decoder that does not know it must refuse
the file (e.g. adapter weights added by a later version). Lower case tags are *ancillary* and may
be skipped. Every length is checked against the bytes that remain before anything is allocated.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from codec.errors import CorruptFileError, UnsupportedError
from codec.files import read_regular_file

SIGNATURE = b"CLLC\r\n\x1a\n"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
END = b"END "
HEAD = b"HEAD"
MAX_FILE_BYTES = 1 << 34

_SECTION = struct.Struct("<4sI")
_CRC = struct.Struct("<I")


@dataclass
class Container:
    sections: list[tuple[bytes, bytes]] = field(default_factory=list)
    version: int = FORMAT_VERSION  # what a parsed file says; new files are always FORMAT_VERSION

    def add(self, tag: bytes, payload: bytes) -> None:
        if len(tag) != 4 or not all(0x20 <= c < 0x7F for c in tag):
            raise ValueError(f"bad section tag {tag!r}")
        if len(payload) >= 1 << 32:
            raise ValueError("section larger than 4 GiB")
        self.sections.append((tag, payload))

    def get(self, tag: bytes) -> bytes | None:
        found = [p for t, p in self.sections if t == tag]
        if len(found) > 1:
            raise CorruptFileError(f"section {tag.decode()} appears {len(found)} times")
        return found[0] if found else None

    def require(self, tag: bytes) -> bytes:
        payload = self.get(tag)
        if payload is None:
            raise CorruptFileError(f"missing section {tag.decode()}")
        return payload

    def to_bytes(self) -> bytes:
        if self.version != FORMAT_VERSION:
            raise ValueError(f"this callic writes .cllc version {FORMAT_VERSION} only")
        out = [SIGNATURE, struct.pack("<H", FORMAT_VERSION)]
        for tag, payload in [*self.sections, (END, b"")]:
            head = _SECTION.pack(tag, len(payload))
            out += [head, payload, _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))]
        return b"".join(out)


def parse(data: bytes, known_critical: frozenset[bytes]) -> Container:
    """Split and check a file; raise ``CorruptFileError`` / ``UnsupportedError`` with a reason."""
    view = memoryview(data)
    if len(view) > MAX_FILE_BYTES:
        raise CorruptFileError("file larger than 16 GiB")
    if len(view) < len(SIGNATURE) + 2 or bytes(view[: len(SIGNATURE)]) != SIGNATURE:
        raise CorruptFileError("not a .cllc file (bad signature)")
    (version,) = struct.unpack_from("<H", view, len(SIGNATURE))
    if version not in READABLE_VERSIONS:
        raise UnsupportedError(
            f".cllc format version {version}; this callic reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    pos = len(SIGNATURE) + 2
    container = Container(version=version)
    while True:
        if len(view) - pos < _SECTION.size + _CRC.size:
            raise CorruptFileError("truncated file (no END section)")
        tag, length = _SECTION.unpack_from(view, pos)
        if not all(0x20 <= c < 0x7F for c in tag):
            raise CorruptFileError("damaged section header")
        body = pos + _SECTION.size
        if length > len(view) - body - _CRC.size:
            raise CorruptFileError(f"truncated file (section {tag!r} claims {length} bytes)")
        (crc,) = _CRC.unpack_from(view, body + length)
        if zlib.crc32(view[body : body + length], zlib.crc32(view[pos:body])) != crc:
            raise CorruptFileError(f"checksum mismatch in section {tag.decode()}")
        pos = body + length + _CRC.size
        if tag == END:
            break
        if not container.sections and tag != HEAD:
            raise CorruptFileError("first section is not HEAD")
        if tag[:1].isupper() and tag not in known_critical:
            raise UnsupportedError(f"file needs section {tag.decode()}, which this callic does not know")
        container.sections.append((tag, bytes(view[body : body + length])))
    if pos != len(view):
        raise CorruptFileError(f"{len(view) - pos} stray bytes after the END section")
    if not container.sections:
        raise CorruptFileError("missing section HEAD")
    return container


def read_cllc(path: str | Path) -> bytes:
    """A ``.cllc`` file's bytes; ``CorruptFileError`` for a device, FIFO or file over 16 GiB."""
    return read_regular_file(path, MAX_FILE_BYTES)
