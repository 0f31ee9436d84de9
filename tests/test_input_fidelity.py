"""Every input round-trips exactly, is refused clearly, or is stored byte for byte (issue 14).

Each input is built here (raw bytes, imagecodecs or Pillow writers) and judged with readers that
are not the Pillow path that makes rasters: libpng/libtiff (imagecodecs), our own PNM parser, and
for the expectations the arrays the inputs were built from.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import struct
import zlib

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from codec import sourcecheck
from codec.images import read_image
from jobs.archivecodec import ArchiveCodec, CodecSettings
from jobs.cli import main
from pipeline.items import Resources
from tests.conftest import SAMPLES, assert_same_pixels

RNG = np.random.default_rng(14)
EXIT_UNSUPPORTED, EXIT_UNREADABLE = 4, 2


# ---------------------------------------------------------------- inputs


def pnm(magic: str, arr: np.ndarray, maxval: int) -> bytes:
    """A binary PGM (P5) or PPM (P6) of ``arr`` at ``maxval``, written by hand."""
    h, w = arr.shape[:2]
    dtype = ">u2" if maxval > 255 else np.uint8
    return f"{magic}\n# built by the test\n{w} {h}\n{maxval}\n".encode() + arr.astype(dtype).tobytes()


def png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def png_with(png: bytes, *chunks: tuple[bytes, bytes]) -> bytes:
    """``png`` with extra chunks right before its first IDAT."""
    at = 8 + 25
    return png[:at] + b"".join(png_chunk(t, p) for t, p in chunks) + png[at:]


def icc_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def animated(fmt: str, frames: int = 3) -> bytes:
    ims = [Image.fromarray(RNG.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(frames)]
    buf = io.BytesIO()
    ims[0].save(buf, format=fmt, save_all=True, append_images=ims[1:], duration=50)
    return buf.getvalue()


def multipage_tiff(pages: int = 3) -> bytes:
    out = b""
    for _ in range(pages):
        out = bytes(imagecodecs.tiff_encode(RNG.integers(0, 255, (6, 5), dtype=np.uint8), appendto=out or None))
    return out


def text_png() -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """An 8-bit RGB PNG with tEXt, zTXt, iTXt, pHYs and tIME chunks."""
    base = bytes(imagecodecs.png_encode(RNG.integers(0, 255, (7, 9, 3), dtype=np.uint8)))
    chunks = [
        (b"tEXt", b"Title\0a test image"),
        (b"zTXt", b"Comment\0\0" + zlib.compress(b"compressed words")),
        (b"iTXt", b"Author\0\0\0en\0Autor\0" + "Zoë".encode()),
        (b"pHYs", struct.pack(">IIB", 11811, 11811, 1)),
        (b"tIME", struct.pack(">HBBBBB", 2026, 12, 1, 11, 5, 0)),
    ]
    return png_with(base, *chunks), chunks


# ---------------------------------------------------------------- archive codec


@pytest.fixture(scope="module")
def archive_codec(tiny_model_path) -> ArchiveCodec:
    return ArchiveCodec(CodecSettings(model=str(tiny_model_path)), Resources("cpu", 1))


def archive_round_trip(archive_codec: ArchiveCodec, name: str, data: bytes) -> tuple[dict, bytes]:
    """(manifest fields, restored bytes) of ``data`` through the archive codec."""
    [enc] = archive_codec.encode_batch([(name, data)], verify=True)
    if isinstance(enc, BaseException):
        raise enc
    row = {**enc.fields, "source_key": name, "source_sha256": hashlib.sha256(data).hexdigest()}
    return enc.fields, archive_codec.restore(enc.blob, row)


def assert_exact_or_passthrough(fields: dict, src: bytes, restored: bytes) -> None:
    if fields["codec"] == "passthrough":
        assert restored == src
    else:
        assert sourcecheck.difference(src, restored) is None


def test_16bit_ppm_and_pgm_round_trip_in_16_bits(archive_codec, tmp_path):
    rgb = RNG.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    rgb[0, 0, 0] = 44975
    gray = RNG.integers(0, 65536, (5, 6), dtype=np.uint16)
    for name, data, arr in (("a.ppm", pnm("P6", rgb, 65535), rgb), ("a.pgm", pnm("P5", gray, 65535), gray)):
        fields, restored = archive_round_trip(archive_codec, name, data)
        assert fields["codec"] != "passthrough" and fields["bit_depth"] == 16, name
        back = sourcecheck.facts(restored)
        assert back.meta["maxval"] == 65535
        assert_same_pixels(back.pixels, arr)
        # and through the command line
        (tmp_path / name).write_bytes(data)
        assert main(["encode", str(tmp_path / name), str(tmp_path / "a.cllc"), "--steps", "0"]) == 0
        assert main(["decode", str(tmp_path / "a.cllc"), str(tmp_path / ("out-" + name))]) == 0
        assert_same_pixels(sourcecheck.facts((tmp_path / ("out-" + name)).read_bytes()).pixels, arr)


def test_ppm_of_maxval_1000_is_stored_as_is_or_refused(archive_codec, tmp_path, capsys):
    arr = RNG.integers(0, 1001, (4, 5, 3), dtype=np.uint16)
    data = pnm("P6", arr, 1000)
    fields, restored = archive_round_trip(archive_codec, "m.ppm", data)
    assert fields["codec"] == "passthrough" and restored == data
    (tmp_path / "m.ppm").write_bytes(data)
    assert main(["encode", str(tmp_path / "m.ppm"), str(tmp_path / "m.cllc"), "--steps", "0"]) == EXIT_UNSUPPORTED
    err = capsys.readouterr().err
    assert "m.ppm" in err and "maxval" in err and "callic archive" in err
    assert not (tmp_path / "m.cllc").exists()


@pytest.mark.parametrize(
    "name,arr",
    [
        ("uint32", np.array([[0, 1, 2**31], [2**32 - 1, 7, 2**31 + 5]], dtype=np.uint32)),
        ("int16", np.array([[-32768, -1, 0], [1, 32767, 5]], dtype=np.int16)),
        ("float64", np.array([[0.5, -1e300, 3.0]], dtype=np.float64)),
    ],
)
def test_tiff_sample_formats_a_raster_cannot_hold_pass_through(archive_codec, tmp_path, capsys, name, arr):
    data = bytes(imagecodecs.tiff_encode(arr))
    fields, restored = archive_round_trip(archive_codec, f"{name}.tif", data)
    assert fields["codec"] == "passthrough" and restored == data
    assert (fields["width"], fields["height"], fields["bit_depth"]) == (arr.shape[1], arr.shape[0], arr.itemsize * 8)
    (tmp_path / "t.tif").write_bytes(data)
    assert main(["encode", str(tmp_path / "t.tif"), str(tmp_path / "t.cllc"), "--steps", "0"]) == EXIT_UNSUPPORTED
    assert "t.tif" in capsys.readouterr().err


def test_planar_16bit_rgb_tiff_is_exact_or_passed_through_with_its_true_size(archive_codec):
    arr = RNG.integers(0, 65536, (64, 4, 3), dtype=np.uint16)
    data = bytes(imagecodecs.tiff_encode(arr, planarconfig="separate"))
    assert_same_pixels(np.asarray(imagecodecs.tiff_decode(data)), arr)  # what libtiff says the file is
    fields, restored = archive_round_trip(archive_codec, "planar.tif", data)
    assert_exact_or_passthrough(fields, data, restored)
    assert (fields["width"], fields["height"], fields["bit_depth"]) == (4, 64, 16)


def test_rgb_tiff_with_two_extra_samples_keeps_them(archive_codec):
    arr = RNG.integers(0, 256, (6, 5, 5), dtype=np.uint8)
    data = bytes(imagecodecs.tiff_encode(arr, photometric="rgb", extrasample="unspecified"))
    fields, restored = archive_round_trip(archive_codec, "extra.tif", data)
    assert_exact_or_passthrough(fields, data, restored)
    assert_same_pixels(np.asarray(imagecodecs.tiff_decode(restored)), arr)


@pytest.mark.parametrize("kind", ["GIF", "PNG", "TIFF"])
def test_multi_frame_inputs_pass_through_and_encode_refuses_them(archive_codec, tmp_path, capsys, kind):
    data = multipage_tiff() if kind == "TIFF" else animated(kind)
    fields, restored = archive_round_trip(archive_codec, f"anim.{kind.lower()}", data)
    assert fields["codec"] == "passthrough" and restored == data
    path = tmp_path / f"anim.{kind.lower()}"
    path.write_bytes(data)
    assert main(["encode", str(path), str(tmp_path / "a.cllc"), "--steps", "0"]) == EXIT_UNSUPPORTED
    err = capsys.readouterr().err
    assert path.name in err and "3 frames" in err


def test_16bit_colour_png_keeps_icc_and_trns(archive_codec):
    arr = RNG.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    icc = icc_profile()
    iccp = (b"iCCP", b"sRGB\0\0" + zlib.compress(icc))
    trns = (b"tRNS", struct.pack(">HHH", *arr[0, 0]))
    data = png_with(bytes(imagecodecs.png_encode(arr)), iccp, trns)
    fields, restored = archive_round_trip(archive_codec, "c16.png", data)
    assert fields["codec"] != "passthrough"
    assert restored[8 + 8 + 9] == 2  # still colour type RGB (tRNS not turned into an alpha channel)
    chunks = dict(sourcecheck.png_chunks(restored))
    assert chunks[b"tRNS"] == trns[1]
    assert zlib.decompress(chunks[b"iCCP"].split(b"\0", 1)[1][1:]) == icc
    assert_same_pixels(np.asarray(imagecodecs.png_decode(restored)), np.asarray(imagecodecs.png_decode(data)))


def test_16bit_colour_tiff_keeps_icc(archive_codec):
    arr = RNG.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    icc = icc_profile()
    data = bytes(imagecodecs.tiff_encode(arr, iccprofile=icc))
    fields, restored = archive_round_trip(archive_codec, "c16.tif", data)
    assert fields["codec"] != "passthrough"
    assert sourcecheck.facts(restored).meta["TIFF tag 34675"] == icc
    assert_same_pixels(np.asarray(imagecodecs.tiff_decode(restored)), arr)


def test_png_text_and_phys_chunks_are_carried(archive_codec, tmp_path, tiny_model_path):
    data, chunks = text_png()
    fields, restored = archive_round_trip(archive_codec, "t.png", data)
    assert fields["codec"] != "passthrough"
    back = sourcecheck.png_chunks(restored)
    for chunk in chunks:
        assert chunk in back, chunk[0]
    assert_same_pixels(np.asarray(imagecodecs.png_decode(restored)), np.asarray(imagecodecs.png_decode(data)))
    (tmp_path / "t.png").write_bytes(data)
    args = ["--steps", "0", "--model", str(tiny_model_path)]
    assert main(["encode", str(tmp_path / "t.png"), str(tmp_path / "t.cllc"), *args]) == 0
    assert main(["decode", str(tmp_path / "t.cllc"), str(tmp_path / "out.png")]) == 0
    assert all(c in sourcecheck.png_chunks((tmp_path / "out.png").read_bytes()) for c in chunks)


def test_unknown_unsafe_png_chunk_passes_through(archive_codec):
    base = bytes(imagecodecs.png_encode(RNG.integers(0, 255, (5, 5), dtype=np.uint8)))
    data = png_with(base, (b"xxYZ", b"tied to the IDAT bytes"))  # upper-case 4th letter: unsafe to copy
    fields, restored = archive_round_trip(archive_codec, "u.png", data)
    assert fields["codec"] == "passthrough" and restored == data


def test_usual_inputs_still_code_exactly(archive_codec):
    """The common cases must not all turn into passthrough: 8-bit RGB, gray, palette + tRNS."""
    chelsea = Image.open(SAMPLES / "chelsea-crop.png")  # with ICC and XMP
    rgb, icc = chelsea.crop((0, 0, 16, 12)), chelsea.info["icc_profile"]
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    inputs = {}
    for name, im, kw in (
        ("rgb.png", rgb, {"icc_profile": icc}),
        ("pal.png", pal, {"transparency": 3}),
        ("gray.tif", rgb.convert("L"), {}),
    ):
        buf = io.BytesIO()
        im.save(buf, format=name.split(".")[1].replace("tif", "TIFF").upper(), **kw)
        inputs[name] = buf.getvalue()
    for name, data in inputs.items():
        fields, restored = archive_round_trip(archive_codec, name, data)
        assert fields["codec"] != "passthrough", name
        assert sourcecheck.difference(data, restored) is None, name


# ---------------------------------------------------------------- reading inputs


def _fail_after(seconds: int) -> None:
    """Make a hang (a read of a FIFO nobody writes) a test failure instead of a stuck suite."""

    def hang(signum, frame):
        raise TimeoutError(f"still reading after {seconds} s")

    signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)


def test_fifo_device_and_text_inputs_fail_fast_and_name_the_file(tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    text = tmp_path / "notes.png"
    text.write_text("just some words\n")
    for path, what in ((fifo, "not a regular file"), (zero, "not a regular file"), (text, "not an image")):
        _fail_after(10)
        try:
            assert main(["encode", str(path), str(tmp_path / "x.cllc"), "--steps", "0"]) == EXIT_UNREADABLE
        finally:
            signal.alarm(0)
        err = capsys.readouterr().err
        assert str(path) in err and what in err and "BytesIO" not in err, err


def test_oversized_input_is_refused_before_reading(tmp_path, monkeypatch):
    from codec import images
    from codec.errors import ImageReadError

    path = tmp_path / "big.png"
    path.write_bytes((SAMPLES / "camera-crop.png").read_bytes())
    monkeypatch.setattr(images, "MAX_INPUT_BYTES", 100)
    with pytest.raises(ImageReadError, match="limit"):
        read_image(path)
