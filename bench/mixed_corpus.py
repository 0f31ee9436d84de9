"""A mixed-format corpus through ``callic archive`` and ``callic restore``, every restored file
judged against its source by readers other than the Pillow path that makes rasters.

Judges: byte equality for passed-through files; otherwise ``codec.sourcecheck`` (libpng, libtiff,
imagecodecs' BMP decoder, our PNM parser: samples, frames, metadata) and, as a second opinion
that shares no library with the archive's own acceptance check, libspng for PNGs and Pillow's
frame count and size for everything it opens. Prints one line per file and the counts of exact,
passthrough, refused (failed rows, with their reasons) and silently changed (must be 0).

    OMP_NUM_THREADS=1 python -m bench.mixed_corpus [--model FILE] [--keep DIR] [--no-special]

(run from the repository root, as a module: it borrows the input builders of the tests).

The corpus includes a FIFO and a symlink to /dev/zero, which the pipeline's source reader must
refuse (``--no-special`` leaves them out, for a pipeline that does not check for regular files).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import struct
import sys
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import imagecodecs
import numpy as np
import ray
from PIL import Image

from codec import sourcecheck
from jobs.cli import main as cli
from pipeline import manifest
from tests.test_input_fidelity import animated, icc_profile, multipage_tiff, png_with, pnm, text_png

RNG = np.random.default_rng(2026)


def _pil(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _img(h: int, w: int, c: int, dtype=np.uint8, top: int | None = None) -> np.ndarray:
    top = top if top is not None else int(np.iinfo(dtype).max)
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 5 + y * 3) * max(1, top // 255)
    shape = (h, w) if c == 1 else (h, w, c)
    noise = RNG.integers(0, max(2, top // 16), shape)
    return ((base if c == 1 else base[..., None]) + noise) % (top + 1)


def corpus() -> dict[str, bytes]:
    """{file name: bytes}: the inputs of issue 14's findings 1 and 11 and the usual ones."""
    rgb8 = _img(12, 16, 3).astype(np.uint8)
    rgb16 = _img(10, 12, 3, np.uint16).astype(np.uint16)
    gray16 = _img(10, 12, 1, np.uint16).astype(np.uint16)
    icc = icc_profile()
    exif = Image.Exif()
    exif[0x010E] = "mixed corpus"
    files = {
        "rgb8.png": _pil(Image.fromarray(rgb8), "PNG"),
        "rgba8.png": _pil(Image.fromarray(_img(12, 16, 4).astype(np.uint8)), "PNG"),
        "gray8.png": _pil(Image.fromarray(rgb8[..., 0]), "PNG"),
        "gray-trns.png": _pil(Image.fromarray(rgb8[..., 0]), "PNG", transparency=7),
        "palette-trns.png": _pil(Image.fromarray(rgb8).quantize(16), "PNG", transparency=2),
        "bilevel.png": _pil(Image.fromarray(rgb8[..., 0] > 128), "PNG"),
        "gray16.png": bytes(imagecodecs.png_encode(gray16)),
        "rgb16.png": bytes(imagecodecs.png_encode(rgb16)),
        "rgba16.png": bytes(imagecodecs.png_encode(_img(10, 12, 4, np.uint16).astype(np.uint16))),
        "rgb16-icc-trns.png": png_with(
            bytes(imagecodecs.png_encode(rgb16)),
            (b"iCCP", b"sRGB\0\0" + zlib.compress(icc)),
            (b"tRNS", struct.pack(">HHH", *rgb16[0, 0])),
        ),
        "text-phys.png": text_png()[0],
        "icc-exif-xmp.png": _pil(Image.fromarray(rgb8), "PNG", icc_profile=icc, exif=exif.tobytes()),
        "unsafe-chunk.png": png_with(_pil(Image.fromarray(rgb8), "PNG"), (b"xxYZ", b"private")),
        "apng.png": animated("PNG"),
        "rgb8.tif": _pil(Image.fromarray(rgb8), "TIFF"),
        "described.tif": _pil(Image.fromarray(rgb8), "TIFF", tiffinfo={270: "a scan", 282: 300.0, 283: 300.0, 296: 2}),
        "exif.tif": _pil(Image.fromarray(rgb8), "TIFF", exif=exif.tobytes()),
        "gray16.tif": bytes(imagecodecs.tiff_encode(gray16)),
        "rgb16.tif": bytes(imagecodecs.tiff_encode(rgb16)),
        "rgb16-icc.tif": bytes(imagecodecs.tiff_encode(rgb16, iccprofile=icc)),
        "planar16.tif": bytes(imagecodecs.tiff_encode(_img(64, 4, 3, np.uint16).astype(np.uint16), planarconfig=2)),
        "extra2.tif": bytes(imagecodecs.tiff_encode(_img(6, 5, 5).astype(np.uint8), photometric="rgb", extrasample=0)),
        "uint32.tif": bytes(imagecodecs.tiff_encode(np.array([[0, 2**31, 2**32 - 1]], dtype=np.uint32))),
        "int16.tif": bytes(imagecodecs.tiff_encode(np.array([[-32768, -1, 32767]], dtype=np.int16))),
        "int32.tif": _pil(Image.fromarray(np.array([[-5, 0, 2**30]], dtype=np.int32)), "TIFF"),
        "float32.tif": _pil(Image.fromarray(RNG.standard_normal((5, 6)).astype(np.float32)), "TIFF"),
        "float64.tif": bytes(imagecodecs.tiff_encode(RNG.standard_normal((5, 6)))),
        "bilevel.tif": _pil(Image.fromarray(rgb8[..., 0] > 100), "TIFF"),
        "pages3.tif": multipage_tiff(),
        "p6-255.ppm": pnm("P6", rgb8, 255),
        "p6-65535.ppm": pnm("P6", rgb16, 65535),
        "p6-1000.ppm": pnm("P6", rgb16 % 1001, 1000),
        "p5-255.pgm": pnm("P5", rgb8[..., 0], 255),
        "p5-65535.pgm": pnm("P5", gray16, 65535),
        "p5-100.pgm": pnm("P5", rgb8[..., 0] % 101, 100),
        "p4.pbm": _pil(Image.fromarray(rgb8[..., 0] > 128), "PPM"),
        "p1.pbm": b"P1\n3 2\n1 0 1\n0 1 0\n",
        "p2.pgm": b"P2\n3 2\n255\n0 10 255\n3 4 5\n",
        "p3.ppm": b"P3\n2 1\n255\n1 2 3 4 5 6\n",
        "rgb24.bmp": _pil(Image.fromarray(rgb8), "BMP"),
        "palette8.bmp": _pil(Image.fromarray(rgb8).quantize(16), "BMP"),
        "photo.jpg": _pil(Image.fromarray(rgb8), "JPEG", quality=85),
        "still.gif": _pil(Image.fromarray(rgb8).quantize(16), "GIF"),
        "anim.gif": animated("GIF"),
        "notes.png": b"just some words, not an image\n",
        "corrupt.png": sourcecheck.PNG_SIGNATURE + bytes(range(256)),
    }
    return files


def judge(src: bytes, restored: bytes | None, row: dict) -> tuple[str, str]:
    """(exact | passthrough | refused | changed, why) for one file."""
    if row["status"] != "ok":
        return "refused", (row.get("error") or "")[:110]
    if restored is None:
        return "changed", "ok in the manifest, but not restored"
    if row["codec"] in ("passthrough", "jpeg-jxl"):
        return ("passthrough", row["codec"]) if restored == src else ("changed", "passthrough bytes differ")
    if restored == src:
        return "exact", "same bytes"
    reason = sourcecheck.difference(src, restored) or _second_opinion(src, restored)
    return ("changed", reason) if reason else ("exact", f"{row['codec']}, same samples and metadata")


def _second_opinion(src: bytes, restored: bytes) -> str | None:
    """libspng for PNG samples; Pillow's frame count, size and mode for whatever it opens."""
    if src.startswith(sourcecheck.PNG_SIGNATURE):
        try:
            a = np.asarray(imagecodecs.spng_decode(src))
        except imagecodecs.SpngError:  # libspng gives only some layouts (no gray + tRNS, ...)
            a = None
        if a is not None:
            b = np.asarray(imagecodecs.spng_decode(restored))
            if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
                return "libspng sees other samples"
    try:
        with Image.open(io.BytesIO(src)) as x, Image.open(io.BytesIO(restored)) as y:
            seen = [(getattr(i, "n_frames", 1), i.size, i.mode) for i in (x, y)]
    except OSError:
        return None  # Pillow cannot open the source: sourcecheck alone judges it
    return None if seen[0] == seen[1] else f"Pillow sees {seen[0]} -> {seen[1]}"


def run(root: Path, model: str | None, special: bool) -> Counter:
    src, dst, out = root / "src", root / "dst", root / "out"
    src.mkdir(parents=True)
    files = corpus()
    for name, data in files.items():
        (src / name).write_bytes(data)
    if special:
        os.mkfifo(src / "fifo.png")
        (src / "zero.png").symlink_to("/dev/zero")
    model_args = ["--model", model] if model else []
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        common = ["--workers", "1", "--quiet"]
        rc = cli(["archive", str(src), str(dst), "--job-id", "m", "--steps", "0", *model_args, *common])
        print(f"callic archive: exit {rc}")
        rc = cli(["restore", str(dst / "m"), str(out), *model_args, "--quiet"])
        print(f"callic restore: exit {rc}")
    finally:
        ray.shutdown()
    rows = {r["source_key"]: r for r in manifest.from_bytes((dst / "m" / "manifest.parquet").read_bytes()).to_pylist()}
    counts: Counter = Counter()
    for name in sorted(set(files) | set(rows)):
        row = rows.get(name, {"status": "missing", "error": "no manifest row"})
        data = files.get(name, b"")
        restored = (out / name).read_bytes() if (out / name).is_file() else None
        verdict, why = judge(data, restored, row)
        counts[verdict] += 1
        codec = row.get("codec") or "-"
        print(f"  {verdict:<11} {name:<20} {codec:<13} {why}")
        if verdict == "changed":
            print(f"    source sha256 {hashlib.sha256(data).hexdigest()[:16]}", file=sys.stderr)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model file (default: a seeded random tiny model, as in the tests)")
    parser.add_argument("--keep", help="folder to build the corpus, archive and restore in (default: a temp dir)")
    parser.add_argument("--no-special", dest="special", action="store_false", help="no FIFO, no /dev/zero link")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or _tiny_model(Path(tmp) / "models")
        counts = run(Path(args.keep) if args.keep else Path(tmp) / "run", model, args.special)
    total = sum(counts.values())
    print(
        f"{total} files: {counts['exact']} exact, {counts['passthrough']} passthrough, "
        f"{counts['refused']} refused, {counts['changed']} silently changed"
    )
    return 1 if counts["changed"] else 0


def _tiny_model(folder: Path) -> str:
    """The tests' seeded random tiny model, installed where decoders look for it."""
    from codec.mgcf.config import MGCFConfig
    from codec.mgcf.weights import save_model
    from tests.conftest import make_model

    folder.mkdir(parents=True)
    os.environ["CALLIC_MODEL_PATH"] = str(folder)
    return str(save_model(make_model(MGCFConfig.tiny()), folder))


if __name__ == "__main__":
    sys.exit(main())
