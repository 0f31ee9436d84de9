"""The archive codec's JPEG paths: a lossless JPEG-XL transcode only when it pays and rebuilds the
very same bytes, the JPEG's own bytes otherwise; restores check the source's SHA-256."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from codec.errors import VerificationError
from jobs.archivecodec import ArchiveCodec, CodecSettings
from pipeline.items import Resources
from tests.corpus import _smooth


def _jpeg(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_smooth(h, w, 3, 9)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jxl_codec(tiny_model_path) -> ArchiveCodec:
    return ArchiveCodec(CodecSettings(model=str(tiny_model_path), jpeg="jxl"), Resources("cpu", 1))


def _row(enc, data: bytes) -> dict:
    return {**enc.fields, "source_key": "x.jpg", "source_sha256": hashlib.sha256(data).hexdigest()}


def test_jpeg_transcoded_when_smaller_and_restored_byte_exact(jxl_codec):
    data = _jpeg(128, 128)
    [enc] = jxl_codec.encode_batch([("x.jpg", data)], verify=True)
    assert enc.fields["codec"] == "jpeg-jxl" and len(enc.blob) < len(data)
    assert (
        enc.suffix == ".jxl" and enc.blob[4:8] == b"JXL "
    )  # a JPEG-XL container (it holds the JPEG reconstruction data)
    assert jxl_codec.restore(enc.blob, _row(enc, data)) == data
    damaged = _row(enc, data) | {"source_sha256": hashlib.sha256(b"other").hexdigest()}
    with pytest.raises(VerificationError):
        jxl_codec.restore(enc.blob, damaged)


def test_tiny_jpeg_passes_through_when_jxl_would_be_bigger(jxl_codec):
    data = _jpeg(24, 32)
    [enc] = jxl_codec.encode_batch([("x.jpg", data)], verify=True)
    assert enc.fields["codec"] == "passthrough" and enc.blob == data
    assert jxl_codec.restore(enc.blob, _row(enc, data)) == data
    assert np.isclose(enc.fields["bpsp"], 8 * len(data) / (24 * 32 * 3))
