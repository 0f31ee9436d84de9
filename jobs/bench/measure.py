"""Measuring one image through one codec: real bytes, median seconds, and a round trip that
must give back the very pixels (values, dtype and shape), else the row is a failure."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jobs.bench.anchors import Codec, Row
from jobs.bench.images import NotRGBError, load_pixels

STAGES = ("rate_estimate_s", "fine_tune_s", "exact_pass_s", "coding_s")  # callic's encode stages


COLUMNS = (
    "image",
    "codec",
    "width",
    "height",
    "bytes",
    "bpsp",
    "encode_s",
    "decode_s",
    "verified",
    "error",
    *STAGES,
    "adapters",
    "adapter_bytes",
)


def mismatch(original: np.ndarray, decoded: Any) -> str | None:
    """Why ``decoded`` is not ``original`` bit for bit, or None: values, dtype and shape all count."""
    if not isinstance(decoded, np.ndarray):
        return f"decoder returned {type(decoded).__name__}, not an array"
    if decoded.dtype != original.dtype:
        return f"dtype {decoded.dtype}, expected {original.dtype}"
    if decoded.shape != original.shape:
        return f"shape {decoded.shape}, expected {original.shape}"
    if not np.array_equal(decoded, original):
        return f"{int(np.count_nonzero(decoded != original))} of {original.size} samples differ"
    return None


def new_row(
    image: str, codec: str, height: int | None = None, width: int | None = None, error: str | None = None
) -> Row:
    """A result row with nothing measured yet: unverified until a round trip proves otherwise."""
    row: Row = dict.fromkeys(COLUMNS)
    row.update(image=image, codec=codec, height=height, width=width, verified=False, error=error)
    return row


def timed_encode(c: Codec, pixels: np.ndarray, repeat: int) -> tuple[bytes, float]:
    """The encoded bytes and the median encode time over ``repeat`` runs."""
    times, data = [], b""
    for _ in range(repeat):
        start = time.perf_counter()
        data = c.encode(pixels)
        times.append(time.perf_counter() - start)
    return bytes(data), statistics.median(times)


def timed_decode(c: Codec, data: bytes, pixels: np.ndarray, repeat: int) -> tuple[str | None, float]:
    """The first mismatch over every decode (each repeat is a round trip too) and the median time.

    The comparison stays outside the timed region.
    """
    times, problem = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        decoded = c.decode(data)
        times.append(time.perf_counter() - start)
        problem = problem or mismatch(pixels, decoded)
    return problem, statistics.median(times)


def bench_one(c: Codec, image: str, pixels: np.ndarray, repeat: int) -> Row:
    """One image through one codec; any exception becomes the row's error so the run goes on."""
    height, width = pixels.shape[:2]
    row = new_row(image, c.name, height, width)
    try:
        data, row["encode_s"] = timed_encode(c, pixels, repeat)
        if c.details is not None:
            row.update(c.details())
        row["bytes"], row["bpsp"] = len(data), 8 * len(data) / (height * width * 3)
        problem, row["decode_s"] = timed_decode(c, data, pixels, repeat)
    except Exception as exc:  # a codec crash is a result to report, not a reason to stop
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    row["verified"] = problem is None
    row["error"] = None if problem is None else f"round trip differs: {problem}"
    return row


def bench_image(
    codecs: Sequence[Codec],
    fs: Any,
    path: str,
    name: str,
    repeat: int,
    skip: frozenset[str] = frozenset(),
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """One image (read once) through every codec not in ``skip``; an unreadable image gives one
    error row per codec. The unit of work of both the serial and the distributed run."""
    pixels, error, shape = None, None, (None, None)
    try:
        pixels = load_pixels(fs, path)
    except NotRGBError as exc:
        error, shape = str(exc), (exc.height, exc.width)
    except Exception as exc:  # unreadable, storage error: recorded, not fatal
        error = f"{type(exc).__name__}: {exc}"
    rows = []
    for c in codecs:
        if c.name in skip:
            continue
        row = bench_one(c, name, pixels, repeat) if pixels is not None else new_row(name, c.name, *shape, error)
        if on_row is not None:
            on_row(row)
        rows.append(row)
    return rows
