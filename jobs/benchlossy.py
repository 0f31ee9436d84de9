"""``callic bench DATA --lossy``: rate-distortion of the CCA codec against JPEG, WebP, AVIF and
JPEG-XL, all measured in the same run on the same images.

For every image and every setting of every codec: real file bytes (bits per pixel), RGB PSNR,
MS-SSIM (``jobs.quality``), encode and decode seconds. Our points are the CCA model files (one per
rate point, the shipped ones by default), each decoded from its bytes (and checked against the
stored reconstruction hash); their setting is named as in ``callic encode --codec cca
--quality Q``: quality 1..N, the Q-th model file given (the shipped rate points, lowest quality
first, by default). A curve is the mean over images at each setting (as Kodak curves
are drawn); BD-rate (``jobs.bdrate``) compares our curve with each anchor on PSNR and on MS-SSIM
in dB (-10 log10(1 - MS-SSIM)).

Anchor settings: JPEG = Pillow's libjpeg (4:2:0, optimize), quality 5..95; WebP = libwebp
(imagecodecs) quality 5..95; AVIF = libavif (imagecodecs, speed 8) quality 10..90;
JPEG-XL = libjxl (imagecodecs, effort 7) distance 0.5..12.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np

from jobs.bdrate import bd_rate
from jobs.quality import ms_ssim, psnr

REFERENCE_PIXELS = 768 * 512  # times are also given per 768x512, scaled by pixel count


@dataclass
class LossyCodec:
    name: str
    settings: list[Any]
    encode: Callable[[np.ndarray, Any], bytes]
    decode: Callable[[bytes], np.ndarray]


def _jpeg_encode(pixels: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _jpeg_decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def anchor_codecs(threads: int | None) -> list[LossyCodec]:
    q = [5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95]
    return [
        LossyCodec("jpeg", q, _jpeg_encode, _jpeg_decode),
        LossyCodec(
            "webp", q, lambda p, s: imagecodecs.webp_encode(p, level=s, lossless=False), imagecodecs.webp_decode
        ),
        LossyCodec(
            "avif",
            [10, 20, 30, 40, 50, 60, 70, 80, 90],
            lambda p, s: imagecodecs.avif_encode(p, level=s, speed=8, numthreads=threads),
            imagecodecs.avif_decode,
        ),
        LossyCodec(
            "jxl",
            [12, 8, 6, 4, 3, 2, 1.5, 1, 0.5],
            lambda p, s: imagecodecs.jpegxl_encode(p, distance=s, effort=7, numthreads=threads),
            imagecodecs.jpegxl_decode,
        ),
    ]


def cca_codec(model_files: list[str], device: str) -> tuple[LossyCodec, list[str]]:
    """Our codec, one setting per model file (rate point), in the order given: quality 1..N, the
    numbering of ``callic encode --quality`` for the shipped rate points."""
    import codec
    from codec.lossy.api import encode_lossy, load_lossy_model

    models = [load_lossy_model(f, device=device) for f in model_files]
    by_index = dict(enumerate(models, start=1))

    def encode(pixels: np.ndarray, index: int) -> bytes:
        return encode_lossy(pixels, model=by_index[index])

    def decode(data: bytes) -> np.ndarray:
        digest = bytes.fromhex(codec.info(data)["model_sha256"])
        model = next(m for m in models if m.digest == digest)
        return codec.decode(data, model=model).pixels

    return LossyCodec("cca", list(by_index), encode, decode), [m.digest.hex()[:16] for m in models]


def measure(c: LossyCodec, setting: Any, name: str, pixels: np.ndarray) -> dict:
    row = {"image": name, "codec": c.name, "setting": setting, "pixels": int(pixels.shape[0] * pixels.shape[1])}
    try:
        start = time.perf_counter()
        data = c.encode(pixels, setting)
        row["encode_s"] = time.perf_counter() - start
        start = time.perf_counter()
        out = c.decode(data)
        row["decode_s"] = time.perf_counter() - start
        if out.shape != pixels.shape or out.dtype != np.uint8:
            raise ValueError(f"decoded {out.shape} {out.dtype}, expected {pixels.shape} uint8")
        row |= {
            "bytes": len(data),
            "bpp": 8 * len(data) / row["pixels"],
            "psnr": psnr(pixels, out),
            "ms_ssim": ms_ssim(pixels, out),
        }
    except Exception as exc:  # a failed point is reported, never dropped silently
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def curves(rows: list[dict]) -> dict[str, list[dict]]:
    """Per codec, per setting: mean bpp, PSNR and MS-SSIM over the images with no error."""
    out: dict[str, list[dict]] = {}
    keys = dict.fromkeys((r["codec"], r["setting"]) for r in rows)
    for codec_name, setting in keys:
        ok = [r for r in rows if r["codec"] == codec_name and r["setting"] == setting and "error" not in r]
        if not ok:
            continue
        ssim = [r["ms_ssim"] for r in ok if r["ms_ssim"] is not None]
        out.setdefault(codec_name, []).append(
            {
                "setting": setting,
                "images": len(ok),
                "bpp": statistics.mean(r["bpp"] for r in ok),
                "psnr": statistics.mean(r["psnr"] for r in ok),
                "ms_ssim": statistics.mean(ssim) if len(ssim) == len(ok) else None,
                "encode_ms": 1000 * statistics.median(r["encode_s"] * REFERENCE_PIXELS / r["pixels"] for r in ok),
                "decode_ms": 1000 * statistics.median(r["decode_s"] * REFERENCE_PIXELS / r["pixels"] for r in ok),
            }
        )
    for points in out.values():
        points.sort(key=lambda p: p["bpp"])
    return out


def ssim_db(value: float) -> float:
    return -10 * math.log10(max(1e-12, 1 - value))


def bd_table(cv: dict[str, list[dict]], test: str = "cca") -> list[dict]:
    table = []
    for anchor in (c for c in cv if c != test):
        if test not in cv:
            break
        a, t = cv[anchor], cv[test]
        by_psnr = bd_rate([(p["bpp"], p["psnr"]) for p in a], [(p["bpp"], p["psnr"]) for p in t])
        with_ssim = all(p["ms_ssim"] is not None for p in a + t)
        by_ssim = (
            bd_rate([(p["bpp"], ssim_db(p["ms_ssim"])) for p in a], [(p["bpp"], ssim_db(p["ms_ssim"])) for p in t])
            if with_ssim
            else None
        )
        table.append({"anchor": anchor, "bd_rate_psnr": by_psnr, "bd_rate_ms_ssim": by_ssim})
    return table


def _f(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def report(cv: dict[str, list[dict]], bd: list[dict], env: str, failures: list[dict]) -> str:
    lines = ["# Lossy rate-distortion", "", env, "", "## BD-rate of cca against each anchor (negative: fewer bits)", ""]
    lines += ["| anchor | BD-rate (PSNR) | BD-rate (MS-SSIM dB) |", "|---|--:|--:|"]
    lines += [f"| {r['anchor']} | {_pct(r['bd_rate_psnr'])} | {_pct(r['bd_rate_ms_ssim'])} |" for r in bd]
    lines += ["", "n/a: no common quality range, or fewer than 4 rising points (``jobs.bdrate``).", ""]
    lines += ["## Curves (mean over images at each setting)", ""]
    lines += [
        "| codec | setting (cca: --quality) | images | bpp | PSNR dB | MS-SSIM | encode ms* | decode ms* |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, points in cv.items():
        for p in points:
            lines.append(
                f"| {name} | {p['setting']} | {p['images']} | {p['bpp']:.4f} | {p['psnr']:.2f} | "
                f"{_f(p['ms_ssim'], '.4f')} | {p['encode_ms']:.0f} | {p['decode_ms']:.0f} |"
            )
    lines += ["", "\\* median over images, scaled to a 768x512 image by pixel count.", ""]
    if failures:
        lines += ["## Failed points", ""] + [
            f"- {r['image']} {r['codec']} {r['setting']}: {r['error']}" for r in failures
        ]
    return "\n".join(lines) + "\n"


def plot(path: Path, cv: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    for name, points in cv.items():
        style = {"marker": "o", "markersize": 3, "label": name, "linewidth": 2.5 if name == "cca" else 1.2}
        ax1.plot([p["bpp"] for p in points], [p["psnr"] for p in points], **style)
        if all(p["ms_ssim"] is not None for p in points):
            ax2.plot([p["bpp"] for p in points], [ssim_db(p["ms_ssim"]) for p in points], **style)
    for ax, label in ((ax1, "PSNR (dB, RGB)"), (ax2, "MS-SSIM (dB)")):
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(args: argparse.Namespace) -> int:
    from jobs.benchimages import list_bench_images, load_pixels
    from jobs.runtime import setup_torch

    setup_torch(args.threads, args.device)
    fs, paths, names = list_bench_images(args.input)
    paths, names = paths[: args.limit], names[: args.limit]
    if not paths:
        print(f"callic bench --lossy: no images in {args.input}", file=sys.stderr)
        return 1
    from codec.modelfiles import PACKAGE_MODELS, quality_levels

    files = args.lossy_models or [str(PACKAGE_MODELS / f) for f in quality_levels()]
    codecs = anchor_codecs(args.threads)
    hashes: list[str] = []
    if files:
        ours, hashes = cca_codec(files, args.device)
        codecs.insert(0, ours)
    else:
        print("callic bench --lossy: no cca models (none shipped, none given): anchors only", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(out / "lossy-rows.jsonl", "w") as log:
        for path, name in zip(paths, names, strict=True):
            pixels = load_pixels(fs, path)
            for c in codecs:
                for setting in c.settings:
                    row = measure(c, setting, name, pixels)
                    rows.append(row)
                    log.write(json.dumps(row) + "\n")
                    log.flush()
            if not args.quiet:
                print(f"{name}: done", file=sys.stderr)
    cv = curves(rows)
    bd = bd_table(cv)
    env = (
        f"{len(paths)} images from {args.input}; cca models {', '.join(hashes) or 'none'}; "
        f"device {args.device}, threads {args.threads or 'default'}"
    )
    text = report(cv, bd, env, [r for r in rows if "error" in r])
    (out / "lossy-report.md").write_text(text)
    (out / "lossy-curves.json").write_text(json.dumps({"curves": cv, "bd_rate": bd, "environment": env}, indent=1))
    plot(out / "rd.png", cv)
    if not args.quiet:
        print(text)
    return 0
