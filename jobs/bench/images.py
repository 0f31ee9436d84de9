"""The benchmarks' input, lossless and lossy alike: image files under a folder or fsspec URL,
and their 8-bit RGB pixels (the anchors are compared on RGB only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from codec.images import read_image
from jobs.imagefiles import list_images, read_file, relative_name

SUFFIXES = frozenset({".png", ".ppm", ".tif", ".tiff", ".bmp", ".webp"})


def list_bench_images(url: str, options: dict[str, Any] | None = None) -> tuple[Any, list[str], list[str]]:
    """Image files under a folder or fsspec URL (``options``: its storage options), recursively,
    sorted: (filesystem, paths, display names).

    Names are relative to the input so that reports from different mounts or buckets line up.
    """
    fs, paths = list_images(url, tuple(sorted(SUFFIXES)), options)
    return fs, paths, [relative_name(p, url, fs) for p in paths]


class NotRGBError(ValueError):
    """The image is readable but is not 8-bit RGB; the anchors are compared on RGB only."""

    def __init__(self, message: str, height: int, width: int) -> None:
        super().__init__(message)
        self.height, self.width = height, width


def load_pixels(fs: Any, path: str) -> np.ndarray:
    """The decoded (H, W, 3) uint8 pixels of one file, fetched through fsspec (any storage)."""
    raster = read_image(read_file(fs, path))
    pixels = raster.pixels
    if raster.mode != "RGB" or pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        message = f"not 8-bit RGB (mode {raster.mode}, {pixels.dtype}, shape {pixels.shape})"
        raise NotRGBError(message, raster.height, raster.width)
    return pixels
