"""Every image comes back exactly: values, dtype and shape."""

import numpy as np
import pytest

import codec
from codec.raster import Raster
from tests.conftest import assert_same_pixels


def _images(samples):
    rng = np.random.default_rng(0)
    photo = samples["kodim23-crop"]
    gray = samples["camera-crop"]
    out = {
        "1x1": rng.integers(0, 256, (1, 1, 3), dtype=np.uint8),
        "1x7": rng.integers(0, 256, (1, 7, 3), dtype=np.uint8),
        "7x1": rng.integers(0, 256, (7, 1, 3), dtype=np.uint8),
        "65x63": photo[:65, :63],
        "63x65": photo[:63, :65],
        "2x2-black": np.zeros((2, 2, 3), np.uint8),
        "white-9x17": np.full((9, 17, 3), 255, np.uint8),
        "noise-31x29": rng.integers(0, 256, (31, 29, 3), dtype=np.uint8),
        "extremes": rng.choice(np.array([0, 255], np.uint8), (16, 24, 3)),
        "gradient": np.broadcast_to(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (21, 40, 3)).copy(),
        "rgba": np.dstack([photo[:33, :47], rng.integers(0, 256, (33, 47), dtype=np.uint8)]),
        "rgba-opaque": np.dstack([photo[:20, :20], np.full((20, 20), 255, np.uint8)]),
        "gray": gray[:50, :61],
        "gray-1x1": gray[:1, :1],
        "gray-alpha": np.dstack([gray[:12, :13], gray[1:13, :13]]),
        "gray16": (gray[:40, :30].astype(np.uint16) * 257 + rng.integers(0, 257, (40, 30), dtype=np.uint16)),
        "rgb16": (photo[:19, :23].astype(np.uint16) * 256 + rng.integers(0, 256, (19, 23, 3), dtype=np.uint16)),
        "rgba16": rng.integers(0, 65536, (5, 6, 4), dtype=np.uint16),
        "bilevel": rng.random((13, 27)) > 0.5,
        "int32": rng.integers(-(2**31), 2**31 - 1, (9, 8), dtype=np.int32),
        "float32": rng.standard_normal((7, 11)).astype(np.float32),
        "astronaut-odd": samples["astronaut-crop"][3:70, 5:66],
        "coffee-tall": samples["coffee-crop"][:, :9],
        "chelsea-wide": samples["chelsea-crop"][:5],
        "monarch-patch-multiple": samples["monarch-crop"][:64, :64],
    }
    for name, arr in samples.items():
        out["sample-" + name] = arr
    return out


def test_at_least_30_images_round_trip_exactly(samples, tiny_model):
    images = _images(samples)
    palette = Raster(samples["kodim23-crop"][:, :, 0] // 32, "P", palette=bytes(range(24)), palette_mode="RGB")
    cmyk = Raster(np.random.default_rng(1).integers(0, 256, (10, 12, 4), dtype=np.uint8), "CMYK")
    cases = [Raster.from_array(a) for a in images.values()] + [palette, cmyk]
    assert len(cases) >= 30
    coders = set()
    for raster in cases:
        data = codec.encode(raster, model=tiny_model, adapt=None, coder="learned")
        out = codec.decode(data)
        assert_same_pixels(out.pixels, raster.pixels)
        assert out.mode == raster.mode
        coders.add(codec.info(data)["coder"])
    assert coders == {"mgcf", "jxl-lossless", "zlib"}
    assert out.mode == "CMYK"


def test_palette_survives(samples, tiny_model):
    raster = Raster(samples["coffee-crop"][:, :, 1] // 16, "P", palette=bytes(range(48)), palette_mode="RGB")
    out = codec.decode(codec.encode(raster, model=tiny_model, adapt=None, coder="learned"))
    assert out.palette == raster.palette and out.palette_mode == "RGB"
    assert_same_pixels(out.pixels, raster.pixels)


@pytest.mark.parametrize("per_stream", [1, 3, 4096])
def test_segmenting_does_not_change_pixels(samples, tiny_model, per_stream):
    img = samples["monarch-crop"][:37, :45]
    data = codec.encode(img, model=tiny_model, adapt=None, coder="learned", patches_per_stream=per_stream)
    assert_same_pixels(codec.decode(data).pixels, img)


def test_batching_changes_neither_bytes_nor_pixels(samples, tiny_model):
    from codec.mgcf import learned

    img = samples["kodim23-crop"][:50, :70]
    net = tiny_model.exact
    streams = learned.encode_rgb(img, net, per_stream=5)
    assert learned.encode_rgb(img, net, per_stream=5, max_patches=1) == streams
    assert learned.encode_rgb(img, net, per_stream=5, max_patches=12) == streams
    for max_patches in (1, 5, 12, 1000):
        assert_same_pixels(learned.decode_rgb(streams, 50, 70, net, 5, max_patches=max_patches), img)


def test_large_image(tiny_model):
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (375, 250, 3), dtype=np.uint8)
    img = np.kron(base, np.ones((8, 8, 1), np.uint8))  # 3000 x 2000, smooth blocks
    img[::7, ::5] ^= 1
    data = codec.encode(img, model=tiny_model, adapt=None, coder="learned", patches_per_stream=4096)
    out = codec.decode(data)
    assert_same_pixels(out.pixels, img)


def test_verify_flag(samples, tiny_model):
    data = codec.encode(samples["chelsea-crop"], model=tiny_model, adapt=None, coder="learned", verify=True)
    assert codec.info(data)["coder"] == "mgcf"
    assert_same_pixels(codec.decode(data).pixels, samples["chelsea-crop"])
