"""Hostile ``.cllc`` files: tiny files whose headers claim far more work or memory than they hold.

They name the shipped model (whose 64 x 64 patches make the memory claims large) and carry
well-formed sections with valid CRCs, so only the decoder's own bounds can refuse them.
Regenerate the fixtures next to this file (after a change of the container or HEAD layout) with::

    python -m tests.hostile.craft

``tests/test_hostile_files.py`` checks that the stored files equal what this module makes.
"""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path

import imagecodecs
import numpy as np

from codec.container import HEAD, SIGNATURE, Container
from codec.header import CODER_JXL, CODER_MGCF, Header

HERE = Path(__file__).resolve().parent
PATCH = 64  # the shipped model's patch size


def _file(header: Header, *sections: tuple[bytes, bytes]) -> bytes:
    """A file of format version 1, which every decoder reads (and which the HEAD layout here is):
    the same bytes then test old decoders too. The CRCs do not cover the version."""
    container = Container()
    container.add(HEAD, header.to_bytes())
    for tag, payload in sections:
        container.add(tag, payload)
    data = container.to_bytes()
    return data[: len(SIGNATURE)] + struct.pack("<H", 1) + data[len(SIGNATURE) + 2 :]


def _mgcf_header(size: int, per_stream: int, model_hash: bytes, channels: int = 3) -> Header:
    mode = "RGB" if channels == 3 else "RGBA"
    return Header(CODER_MGCF, size, size, channels, "uint8", mode, bytes(32), model_hash, PATCH, per_stream)


def _streams(lengths: list[int]) -> bytes:
    """An mgcf DATA payload with streams of these lengths (all zero bytes)."""
    return struct.pack(f"<I{len(lengths)}I", len(lengths), *lengths) + bytes(sum(lengths))


def claim_4096(model_hash: bytes) -> bytes:
    """137 bytes: 4096 x 4096 in one segment of 4096 patches, i.e. 4096 patches of caches at once
    (61 GB with the format-1 decoder), and an empty stream."""
    return _file(_mgcf_header(4096, 4096, model_hash), (b"DATA", _streams([0])))


def _segments_18000() -> int:
    return math.ceil(math.ceil(18000 / PATCH) ** 2 / 64)


def claim_18000_empty(model_hash: bytes) -> bytes:
    """5 KB: 18000 x 18000 (972 MB of pixels, under the pixel limit), 1243 empty streams: empty
    streams decode as zeros, so this ran for about a day before the final hash check."""
    return _file(_mgcf_header(18000, 64, model_hash), (b"DATA", _streams([0] * _segments_18000())))


def claim_18000_one_word(model_hash: bytes) -> bytes:
    """10 KB: the same claim with one (zero) word per stream, which no stream-length check catches."""
    return _file(_mgcf_header(18000, 64, model_hash), (b"DATA", _streams([4] * _segments_18000())))


def jxl_flat(side: int) -> bytes:
    """A lossless JPEG-XL codestream of a flat ``side`` x ``side`` gray image: 31 KB for 16384
    (268 MB of samples; imagecodecs took 6 s and 1.3 GB to decode it before the header's shape
    was compared). Made by libjxl, so its bytes may change with libjxl's version."""
    return bytes(imagecodecs.jpegxl_encode(np.full((side, side), 77, np.uint8), lossless=True, effort=1, numthreads=1))


def jxl_claimed_side(stream: bytes) -> int | None:
    """The height of a bare square JPEG-XL codestream, read from its SizeHeader (None if it is not one)."""
    bits = [(byte >> i) & 1 for byte in stream[2:12] for i in range(8)]

    def take(n: int) -> int:
        value = sum(bit << i for i, bit in enumerate(bits[:n]))
        del bits[:n]
        return value

    if stream[:2] != b"\xff\x0a":
        return None
    side = 8 * (take(5) + 1) if take(1) else take((9, 13, 18, 30)[take(2)]) + 1
    return side if take(3) == 1 else None


def jxl_bomb(side: int = 16384) -> bytes:
    """A gray 8 x 8 file whose JPEG-XL payload holds a ``side`` x ``side`` image."""
    header = Header(CODER_JXL, 8, 8, 1, "uint8", "L", bytes(32), bytes(32), 0, 0)
    return _file(header, (b"DATA", jxl_flat(side)))


FIXTURES = {
    "mgcf_4096x4096_one_segment.cllc": claim_4096,
    "mgcf_18000x18000_empty_streams.cllc": claim_18000_empty,
    "mgcf_18000x18000_one_word_streams.cllc": claim_18000_one_word,
}
JXL_FIXTURE = "jxl_16384x16384_payload.cllc"


def build(model_hash: bytes) -> dict[str, bytes]:
    """The mgcf fixtures, by file name, naming ``model_hash``."""
    return {name: make(model_hash) for name, make in FIXTURES.items()}


def main() -> None:
    from codec.api import load_model

    for name, data in (build(load_model().digest) | {JXL_FIXTURE: jxl_bomb()}).items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
