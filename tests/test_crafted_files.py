"""Files edited with valid CRCs: a changed mode, palette, transparency or metadata is refused (the
v2 hash covers how the pixels are shown), and crafted headers and sections give a clean error and
exit code, never a traceback; restore compares what the manifest recorded."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import codec
import codec.api
import codec.fileformat
from codec.container import FORMAT_VERSION, HEAD, SIGNATURE, parse
from codec.errors import CorruptFileError, UnsupportedError, VerificationError
from codec.header import KNOWN_CRITICAL, read_header
from codec.raster import Raster, pixel_hash
from jobs.archivecodec import ArchiveCodec, CodecSettings
from jobs.cli import main
from pipeline.items import Resources
from tests.conftest import assert_same_pixels

FIXTURES = Path(__file__).parent / "fixtures"
RGB = np.arange(6 * 7 * 3, dtype=np.uint8).reshape(6, 7, 3) * 5


def _rewrite(data: bytes, **sections: bytes | None) -> bytes:
    """``data`` with sections replaced (None: removed), CRCs valid, its format version kept."""
    c = parse(data, KNOWN_CRITICAL)
    tags = {k.replace("_", " ").ljust(4).encode(): v for k, v in sections.items()}
    c.sections = [(t, tags.get(t, p)) for t, p in c.sections if tags.get(t, p) is not None]
    before = {t for t, _ in c.sections}
    c.sections[-1:-1] = [(t, p) for t, p in tags.items() if p is not None and t not in before]
    c.version = FORMAT_VERSION  # the writer writes its own version only; the file's is put back below
    out = bytearray(c.to_bytes())
    out[len(SIGNATURE) : len(SIGNATURE) + 2] = data[len(SIGNATURE) : len(SIGNATURE) + 2]  # outside every CRC
    return bytes(out)


def _with_head(data: bytes, **changes) -> bytes:
    header, _ = read_header(data)
    return _rewrite(data, HEAD=dataclasses.replace(header, **changes).to_bytes())


def _raw_head_mode(data: bytes, mode: bytes) -> bytes:
    """HEAD with its mode bytes replaced, whatever they say (Header would refuse to hold some)."""
    c = parse(data, KNOWN_CRITICAL)
    head = c.get(HEAD)
    n = head[11]  # after u8 coder, u32 height, u32 width, u8 channels, u8 dtype
    return _rewrite(data, HEAD=head[:11] + bytes([len(mode)]) + mode + head[12 + n :])


def _palette_file() -> tuple[Raster, bytes]:
    r = Raster.from_array((np.arange(30, dtype=np.uint8).reshape(5, 6) % 4), "P")
    r.palette, r.palette_mode = bytes([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]), "RGB"
    r.transparency = b'{"value": 2}'
    return r, codec.encode(r)


# ---------------------------------------------------------------- finding 4: what the hash covers


def test_inverted_palette_is_refused():
    raster, data = _palette_file()
    assert_same_pixels(codec.decode(data).pixels, raster.pixels)
    inverted = bytes(255 - b for b in raster.palette)
    with pytest.raises(VerificationError):
        codec.decode(_rewrite(data, PLTE=b"\x03RGB" + inverted))


@pytest.mark.parametrize("section", ["trns", "iccp", "exif", "xmp_"])
def test_changed_or_removed_transparency_and_metadata_are_refused(section):
    raster, _ = _palette_file()
    raster.icc_profile, raster.exif, raster.xmp = b"icc", b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00", b"<x/>"
    data = codec.encode(raster)
    assert codec.decode(data).icc_profile == b"icc"
    for value in (None, b'{"value": 1}' if section == "trns" else b"other"):
        with pytest.raises(VerificationError):
            codec.decode(_rewrite(data, **{section: value}))


@pytest.mark.parametrize(
    ("pixels", "mode", "new_mode"), [(RGB, "RGB", "YCbCr"), (np.dstack([RGB, RGB[..., 0]]), "RGBA", "CMYK")]
)
def test_changed_mode_is_refused(pixels, mode, new_mode, tiny_model):
    classical = codec.encode(Raster.from_array(pixels, mode), coder="classical")
    with pytest.raises(VerificationError):
        codec.decode(_with_head(classical, mode=new_mode))
    learned = codec.encode(Raster.from_array(pixels, mode), model=tiny_model, adapt=None, coder="learned")
    assert codec.info(learned)["coder"] == "mgcf"
    with pytest.raises(CorruptFileError, match="mgcf"):  # the learned coder only codes RGB(A)
        codec.decode(_with_head(learned, mode=new_mode), model=tiny_model)


def test_v1_files_verify_as_before_and_refuse_what_they_can():
    """v1's hash covers the pixels only: a v1 file keeps decoding; a mode its coder cannot have is refused."""
    data = (FIXTURES / "rgb-mgcf.v1.cllc").read_bytes()
    raster = codec.decode(data)
    assert codec.info(data)["pixel_sha256"] == pixel_hash(raster.pixels).hex()
    with pytest.raises(CorruptFileError):
        codec.decode(_with_head(data, mode="YCbCr"))


# ---------------------------------------------------------------- finding 10: crafted headers and sections


@pytest.mark.parametrize("mode", [b"RGBX", b"1", b"I;16", b"LA", b"", b"RGB", b"\xff"])
def test_head_mode_that_does_not_fit_the_pixels_is_corrupt(mode, tmp_path):
    data = codec.encode(Raster.from_array(RGB[..., 0]))  # 8-bit gray, mode L
    bad = _raw_head_mode(data, mode)
    with pytest.raises(CorruptFileError):
        codec.decode(bad)
    (tmp_path / "bad.cllc").write_bytes(bad)
    assert main(["decode", str(tmp_path / "bad.cllc"), str(tmp_path / "out.png")]) == 3
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    "plte",
    [b"\x03XYZ" + bytes(12), b"\x03RGB" + bytes(13), b"\x04RGBA" + bytes(6), b"\x09RGB", b"", b"\x03RGB" + bytes(771)],
)
def test_bad_palette_is_corrupt(plte, tmp_path):
    _, data = _palette_file()
    bad = _rewrite(data, PLTE=plte)
    with pytest.raises(CorruptFileError, match="PLTE"):
        codec.decode(bad)
    (tmp_path / "bad.cllc").write_bytes(bad)
    assert main(["decode", str(tmp_path / "bad.cllc"), str(tmp_path / "out.png")]) == 3


def test_palette_on_a_gray_image_is_corrupt():
    _, palette = _palette_file()
    gray = codec.encode(Raster.from_array(RGB[..., 0]))
    with pytest.raises(CorruptFileError, match="PLTE"):
        codec.decode(_rewrite(gray, PLTE=parse(palette, KNOWN_CRITICAL).get(b"PLTE")))


@pytest.mark.parametrize(
    "trns",
    [b"not json", b"\xff\xfe", b'{"value": "x"}', b'{"value": [1, 2]}', b'{"bytes": "zz"}', b"[1]", b"[" * 100000],
)
def test_bad_transparency_is_corrupt_at_decode(trns, tmp_path):
    _, data = _palette_file()
    bad = _rewrite(data, trns=trns)
    with pytest.raises(CorruptFileError, match="trns"):
        codec.decode(bad)
    (tmp_path / "bad.cllc").write_bytes(bad)
    assert main(["decode", str(tmp_path / "bad.cllc"), str(tmp_path / "out.png")]) == 3


def test_garbage_exif_cannot_be_written_to_tiff_but_to_png(tmp_path):
    raster = Raster.from_array(RGB)
    raster.exif = b"garbage, not a TIFF structure"
    path = tmp_path / "g.cllc"
    path.write_bytes(codec.encode(raster, coder="classical"))
    assert main(["decode", str(path), str(tmp_path / "out.tif")]) == 4
    assert not (tmp_path / "out.tif").exists()
    assert main(["decode", str(path), str(tmp_path / "out.png")]) == 0
    with Image.open(tmp_path / "out.png") as im:
        assert np.array_equal(np.asarray(im), RGB) and im.info["exif"].endswith(raster.exif)


def test_dev_zero_as_input_is_refused_quickly(tmp_path):
    assert main(["decode", "/dev/zero", str(tmp_path / "out.png")]) == 3
    assert main(["info", "/dev/zero"]) == 3


def test_encoder_refuses_what_its_decoder_would(monkeypatch):
    with pytest.raises(UnsupportedError, match="mode RGBX"):
        codec.encode(Raster(RGB, "RGBX"))
    bad_palette = Raster.from_array(RGB[..., 0], "P")
    bad_palette.palette = bytes(7)
    with pytest.raises(UnsupportedError, match="palette"):
        codec.encode(bad_palette)
    monkeypatch.setattr(codec.fileformat, "MAX_PIXEL_BYTES", 100)  # check_encodable lives there
    with pytest.raises(UnsupportedError, match="CALLIC_MAX_PIXEL_BYTES"):
        codec.encode(np.zeros((5, 6), np.float32))


# ---------------------------------------------------------------- archive and restore


@pytest.fixture(scope="module")
def archive_codec(tiny_model_path) -> ArchiveCodec:
    return ArchiveCodec(CodecSettings(model=str(tiny_model_path)), Resources("cpu", 1))


def _file(pixels: np.ndarray, fmt: str, **info) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **info)
    return buf.getvalue()


def _row(enc, data: bytes, key: str) -> dict:
    return {**enc.fields, "source_key": key, "source_sha256": hashlib.sha256(data).hexdigest()}


def test_float_tiff_over_the_decode_limit_fails_at_archive_time(archive_codec, monkeypatch):
    data = _file(np.zeros((5, 6), np.float32), "TIFF")
    monkeypatch.setattr(codec.fileformat, "MAX_PIXEL_BYTES", 100)  # check_encodable lives there
    [result] = archive_codec.encode_batch([("big.tif", data)], verify=False)
    assert isinstance(result, UnsupportedError) and "CALLIC_MAX_PIXEL_BYTES" in str(result)


def test_restore_refuses_edited_palette_and_mode(archive_codec):
    im = Image.fromarray((np.arange(42, dtype=np.uint8).reshape(6, 7) % 3), "P")
    im.putpalette([10, 20, 30, 200, 100, 0, 0, 255, 0])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = buf.getvalue()
    [enc] = archive_codec.encode_batch([("p.png", data)], verify=True)
    row = _row(enc, data, "p.png")
    with Image.open(io.BytesIO(archive_codec.restore(enc.blob, row))) as back:
        assert back.mode == "P" and np.array_equal(np.asarray(back.convert("RGB")), np.asarray(im.convert("RGB")))
    plte = parse(enc.blob, KNOWN_CRITICAL).get(b"PLTE")
    with pytest.raises(VerificationError):
        archive_codec.restore(_rewrite(enc.blob, PLTE=plte[:4] + bytes(255 - b for b in plte[4:])), row)
    with pytest.raises(VerificationError, match="mode"):
        archive_codec.restore(enc.blob, {**row, "mode": "L"})


def test_restore_of_a_v1_row_checks_the_v1_hash_and_the_recorded_mode(archive_codec):
    blob = (FIXTURES / "cmyk-jxl.v1.cllc").read_bytes()
    raster = codec.decode(blob)
    row = {
        "codec": "jxl-lossless",
        "format": "TIFF",
        "source_key": "c.tif",
        "width": 5,
        "height": 4,
        "mode": "CMYK",
        "bit_depth": 8,
        "raw_bytes": 80,
        "pixel_hash": pixel_hash(raster.pixels).hex(),
    }
    with Image.open(io.BytesIO(archive_codec.restore(blob, row))) as back:
        assert back.mode == "CMYK" and np.array_equal(np.asarray(back), raster.pixels)
    relabelled = _with_head(blob, mode="RGBA")  # v1's hash does not cover the mode: the manifest does
    assert codec.decode(relabelled).mode == "RGBA"
    with pytest.raises(VerificationError, match="mode"):
        archive_codec.restore(relabelled, row)


def test_lossy_encoder_refuses_an_image_over_the_decode_limit(tiny_lossy_model_path, monkeypatch):
    from codec.cca.api import encode_lossy, load_lossy_model

    model = load_lossy_model(str(tiny_lossy_model_path))
    monkeypatch.setattr(codec.fileformat, "MAX_PIXEL_BYTES", 100)  # check_encodable lives there
    with pytest.raises(UnsupportedError, match="CALLIC_MAX_PIXEL_BYTES"):
        encode_lossy(np.zeros((8, 8, 3), np.uint8), model=model)
