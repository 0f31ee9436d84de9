"""Damaged files are refused with a clear error, quickly, and never decode to wrong pixels."""

import random
import struct
import time
import zlib

import numpy as np
import pytest

import codec
from codec.container import SIGNATURE, Container, parse
from codec.errors import CallicError, CorruptFileError, ModelNotFoundError, UnsupportedError


@pytest.fixture(scope="module")
def files(samples, tiny_model):
    learned = {"model": tiny_model, "adapt": None, "coder": "learned"}
    rgb = codec.encode(samples["kodim23-crop"][:40, :56], patches_per_stream=8, **learned)
    rgba = codec.encode(np.dstack([samples["coffee-crop"][:9, :10], np.full((9, 10), 7, np.uint8)]), **learned)
    gray = codec.encode(samples["camera-crop"][:30, :20])
    return {"rgb": rgb, "rgba": rgba, "gray": gray}


def test_bad_signature_and_version(files):
    data = files["rgb"]
    with pytest.raises(CorruptFileError, match="signature"):
        codec.decode(b"PNG" + data[3:])
    newer = data[: len(SIGNATURE)] + struct.pack("<H", 99) + data[len(SIGNATURE) + 2 :]
    with pytest.raises(UnsupportedError, match="version 99"):
        codec.decode(newer)
    with pytest.raises(CorruptFileError):
        codec.decode(b"")


def test_unknown_critical_section_is_refused_ancillary_is_skipped():
    c = Container()
    c.add(b"HEAD", b"x")
    c.add(b"ADPT", b"adapters from the future")
    with pytest.raises(UnsupportedError, match="ADPT"):
        parse(c.to_bytes(), frozenset({b"HEAD"}))
    c = Container()
    c.add(b"HEAD", b"x")
    c.add(b"note", b"ancillary")
    assert parse(c.to_bytes(), frozenset({b"HEAD"})).get(b"note") == b"ancillary"


def test_missing_model_is_reported(files, tiny_model):
    data = bytearray(files["rgb"])
    head = data.find(b"HEAD")
    (length,) = struct.unpack_from("<I", data, head + 4)
    payload = bytearray(data[head + 8 : head + 8 + length])
    model_at = length - 36  # 32 B model hash + u16 + u16 end the HEAD payload
    payload[model_at : model_at + 32] = bytes(32)
    data[head + 8 : head + 8 + length] = payload
    crc = zlib.crc32(bytes(payload), zlib.crc32(bytes(data[head : head + 8])))
    struct.pack_into("<I", data, head + 8 + length, crc)
    with pytest.raises(ModelNotFoundError, match="not installed"):
        codec.decode(bytes(data))


def test_fuzz_truncations_and_bit_flips(files):
    rng = random.Random(1234)
    cases = []
    for data in files.values():
        for _ in range(90):
            cases.append(data[: rng.randrange(len(data))])
        for _ in range(90):
            flipped = bytearray(data)
            for _ in range(rng.choice([1, 1, 2, 8])):
                pos = rng.randrange(len(flipped))
                flipped[pos] ^= 1 << rng.randrange(8)
            cases.append(bytes(flipped))
    cases.append(files["rgb"] + b"\0")
    assert len(cases) >= 500
    worst = 0.0
    for bad in cases:
        start = time.perf_counter()
        with pytest.raises(CallicError):
            codec.decode(bad)
        worst = max(worst, time.perf_counter() - start)
    assert worst < 3.0, worst


def test_oversized_image_claim_is_refused_before_allocating(files, monkeypatch):
    import codec.header

    monkeypatch.setattr(codec.header, "MAX_PIXEL_BYTES", 1000)  # the decoder's limit lives with HEAD
    with pytest.raises(UnsupportedError, match="decode limit"):
        codec.decode(files["rgb"])  # 40 x 56 x 3 = 6720 bytes of pixels
