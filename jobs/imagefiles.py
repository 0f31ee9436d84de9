"""Image files in a folder or behind an fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``file://``).

Jobs take "a folder or URL of images"; this is the one place that turns that into sorted file
names and pixels, so local folders and object stores behave the same.
"""

from __future__ import annotations

from typing import Any

import fsspec

from pipeline.storage import RetryPolicy, Store, redact, retrying

IMAGE_SUFFIXES = (".png", ".ppm", ".pgm", ".tif", ".tiff", ".bmp", ".webp", ".jpg", ".jpeg")


def list_images(
    url: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES, options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The filesystem and the sorted paths of image files under ``url`` (recursively), reached
    as ``pipeline.storage.Store`` reaches it (``options``: fsspec storage options, credentials)."""
    store = Store(str(url), options or {})
    fs, root = store.fs, store.root
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


def read_file(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """A listed file's bytes, with ``Store``'s retries (an object store fails transiently)."""
    return retrying(f"read {redact(path)}", lambda: fs.cat_file(path), RetryPolicy())
