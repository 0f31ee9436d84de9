"""A small mixed corpus for archive tests: every kind of input the archive must give back exactly,
and a few files it must record as failed."""

from __future__ import annotations

import io
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image

from codec.images import read_image


def _smooth(h: int, w: int, c: int, seed: int, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 3 + y * 2)[..., None] * (top // 255) + rng.integers(0, top // 16 + 1, (h, w, c))
    return (base % top).astype(dtype)


def build(root: Path) -> dict[str, str]:
    """Write the corpus under ``root``; returns {relative key: "pixels" | "bytes" | "fail"}:
    how a restore is checked (same pixels, same bytes) or that the archive must fail it."""
    kinds: dict[str, str] = {}

    def save(key: str, data: bytes, kind: str) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        kinds[key] = kind

    def pil(im: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        return buf.getvalue()

    save("rgb/a.png", pil(Image.fromarray(_smooth(40, 32, 3, 1)), "PNG"), "pixels")
    save("rgb/b.png", pil(Image.fromarray(_smooth(17, 33, 3, 2)), "PNG"), "pixels")
    save("gray.png", pil(Image.fromarray(_smooth(24, 24, 1, 3)[..., 0]), "PNG"), "pixels")
    save("rgba.png", pil(Image.fromarray(_smooth(20, 18, 4, 4)), "PNG"), "pixels")
    save("palette.png", pil(Image.fromarray(_smooth(16, 16, 3, 5)).quantize(16), "PNG"), "pixels")
    save("deep16.png", bytes(imagecodecs.png_encode(_smooth(12, 14, 3, 6, np.uint16))), "pixels")
    save("scan.tif", pil(Image.fromarray(_smooth(20, 20, 3, 7)), "TIFF"), "pixels")
    save("plain.ppm", pil(Image.fromarray(_smooth(10, 12, 3, 8)), "PPM"), "pixels")
    save(
        "photo.jpg", pil(Image.fromarray(_smooth(128, 128, 3, 9)), "JPEG", quality=80), "bytes"
    )  # big enough that JPEG-XL is smaller
    frames = [Image.fromarray(_smooth(12, 12, 3, s)).convert("P") for s in (10, 11)]
    save("anim.gif", pil(frames[0], "GIF", save_all=True, append_images=frames[1:]), "bytes")
    save("bad/corrupt.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2, "fail")
    whole = pil(Image.fromarray(_smooth(30, 30, 3, 12)), "PNG")
    save("bad/truncated.png", whole[: len(whole) // 2], "fail")
    return kinds


def check_restored(src: Path, out: Path, kinds: dict[str, str]) -> None:
    """Every good file restored exactly (pixels, dtype, shape; or bytes), no bad one written."""
    for key, kind in kinds.items():
        restored = out / key
        if kind == "fail":
            assert not restored.exists(), key
        elif kind == "bytes":
            assert restored.read_bytes() == (src / key).read_bytes(), key
        else:
            a, b = read_image(src / key), read_image(restored)
            assert a.pixels.dtype == b.pixels.dtype and a.pixels.shape == b.pixels.shape, key
            assert np.array_equal(a.pixels, b.pixels), key
            assert a.mode == b.mode, key
