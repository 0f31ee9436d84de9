"""File I/O: what Pillow would lose (16-bit colour, metadata) survives the trip."""

import io

import imagecodecs
import numpy as np
import pytest
from PIL import Image

import codec
from codec.images import read_image, write_image, write_image_bytes
from tests.conftest import SAMPLES, assert_same_pixels


def test_16bit_colour_png_and_tiff_are_read_in_full(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    for name, data in (("a.png", imagecodecs.png_encode(arr)), ("a.tif", imagecodecs.tiff_encode(arr))):
        (tmp_path / name).write_bytes(data)
        raster = read_image(tmp_path / name)
        assert raster.mode == "RGB;16"
        assert_same_pixels(raster.pixels, arr)
        out = codec.decode(codec.encode(raster))
        write_image(out, tmp_path / ("out-" + name))
        assert_same_pixels(read_image(tmp_path / ("out-" + name)).pixels, arr)


def test_icc_xmp_exif_are_carried_through(tmp_path, tiny_model):
    src = read_image(SAMPLES / "chelsea-crop.png")
    assert src.icc_profile and src.xmp
    exif = Image.Exif()
    exif[0x010E] = "callic test"  # ImageDescription
    src.exif = exif.tobytes()
    out = codec.decode(codec.encode(src, model=tiny_model, adapt=None, coder="learned"))
    for fmt in ("PNG", "TIFF"):
        back = read_image(write_image_bytes(out, fmt))
        assert back.icc_profile == src.icc_profile, fmt
        assert back.xmp is not None and back.xmp.strip(b"\0") == src.xmp.strip(b"\0"), fmt
        with Image.open(io.BytesIO(write_image_bytes(out, fmt))) as im:
            assert im.getexif().get(0x010E) == "callic test", fmt
        assert_same_pixels(back.pixels, src.pixels)


@pytest.mark.parametrize("mode", ["P", "1", "L", "LA", "RGBA", "I;16", "I", "F"])
def test_pillow_modes_round_trip_through_png_or_tiff(tmp_path, mode, tiny_model):
    rgb = Image.open(SAMPLES / "coffee-crop.png").convert("RGB")
    im = rgb.convert(mode) if mode not in ("I;16", "I", "F") else rgb.convert("L").convert(mode)
    ext = "tif" if mode in ("I", "F") else "png"
    im.save(tmp_path / f"in.{ext}")
    raster = read_image(tmp_path / f"in.{ext}")
    out = codec.decode(codec.encode(raster, model=tiny_model, adapt=None, coder="learned"))
    write_image(out, tmp_path / f"out.{ext}")
    assert_same_pixels(read_image(tmp_path / f"out.{ext}").pixels, raster.pixels)
    assert read_image(tmp_path / f"out.{ext}").mode == raster.mode


def test_transparent_palette_png(tmp_path, tiny_model):
    im = Image.open(SAMPLES / "monarch-crop.png").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    im.info["transparency"] = 3
    im.save(tmp_path / "p.png", transparency=3)
    raster = read_image(tmp_path / "p.png")
    write_image(codec.decode(codec.encode(raster)), tmp_path / "q.png")
    assert_same_pixels(read_image(tmp_path / "q.png").pixels, raster.pixels)
    with Image.open(tmp_path / "q.png") as q, Image.open(tmp_path / "p.png") as p:
        assert q.info.get("transparency") == p.info.get("transparency") == 3
        assert np.array_equal(np.asarray(q.convert("RGBA")), np.asarray(p.convert("RGBA")))


def test_unreadable_image_is_a_clear_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(codec.ImageReadError):
        read_image(tmp_path / "x.png")
