"""Image files in a folder or behind an fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``file://``).

Jobs take "a folder or URL of images"; this is the one place that turns that into sorted file
names and pixels, so local folders and object stores behave the same.
"""

from __future__ import annotations

import fsspec

IMAGE_SUFFIXES = (".png", ".ppm", ".pgm", ".tif", ".tiff", ".bmp", ".webp", ".jpg", ".jpeg")


def list_images(url: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The filesystem and the sorted paths of image files under ``url`` (recursively)."""
    fs, root = fsspec.core.url_to_fs(str(url))
    if fs.isfile(root):
        return fs, [root]
    if not fs.isdir(root):
        raise FileNotFoundError(f"no such folder or file: {url}")
    paths = sorted(p for p in fs.find(root) if p.lower().endswith(suffixes))
    return fs, paths


def relative_name(path: str, url: str, fs: fsspec.AbstractFileSystem) -> str:
    """``path`` relative to the listed root, for reports and manifests."""
    root = fs._strip_protocol(str(url)).rstrip("/")
    return path[len(root) + 1 :] if path.startswith(root + "/") else path.rsplit("/", 1)[-1]
