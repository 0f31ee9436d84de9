"""``callic bench DATA --lossy``: rate-distortion of our lossy codecs (every lossy codec of
``codec.registry``; today ``cca``) against JPEG, WebP, AVIF and JPEG-XL, all measured in the same
run on the same images.

For every image and every setting of every codec: real file bytes (bits per pixel), RGB PSNR,
MS-SSIM (``jobs.bench.quality``), encode and decode seconds. Our points are model files (one per
rate point, the shipped ones by default), each coded by the registry codec opened on it, as
``callic archive --codec cca`` codes, and decoded from its bytes (and checked against the stored
reconstruction hash); their setting is named as in ``callic encode --codec cca --quality Q``:
quality 1..N, the Q-th model file given (the shipped rate points, lowest quality first, by
default). A curve is the mean over images at each setting (as Kodak curves are drawn); BD-rate
(``jobs.bench.bdrate``) compares our curves with each anchor on PSNR and on MS-SSIM in dB
(-10 log10(1 - MS-SSIM)).

Anchor settings: JPEG = Pillow's libjpeg (4:2:0, optimize), quality 5..95; WebP = libwebp
(imagecodecs) quality 5..95; AVIF = libavif (imagecodecs, speed 8) quality 10..90;
JPEG-XL = libjxl (imagecodecs, effort 7) distance 0.5..12.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobs.bench.anchors import LossyCodec, lossy_anchor_codecs
from jobs.bench.bdrate import bd_rate
from jobs.bench.quality import ms_ssim, psnr

REFERENCE_PIXELS = 768 * 512  # times are also given per 768x512, scaled by pixel count


def ours() -> list[str]:
    """The lossy codecs of ``codec.registry`` (today ``cca``): the curves the anchors are compared with."""
    from codec import registry

    return [e.name for e in registry.codec_entries() if e.lossy]


def registry_codec(name: str, model_files: list[str], device: str) -> tuple[LossyCodec, list[str]]:
    """A lossy ``codec.registry`` codec, opened once per model file (rate point, its
    ``lossy_model``) in the order given: settings 1..N, the numbering of ``callic encode
    --quality`` for the shipped rate points. Each file decodes with the encoder of the model it
    names. Also the models' hashes (16 hex digits)."""
    import codec
    from codec import registry
    from codec.raster import Raster

    chosen = registry.codec(name)
    encoders = {
        i: chosen.open(chosen.settings_type.pick({"lossy_model": f}), device) for i, f in enumerate(model_files, 1)
    }
    digests = {i: e.fingerprint()["lossy_model"] for i, e in encoders.items()}

    def encode(pixels: np.ndarray, index: int) -> bytes:
        [(data, _)] = encoders[index].encode_many([Raster.from_array(pixels)], verify=False)
        return data

    def decode(data: bytes) -> np.ndarray:
        digest = codec.info(data)["model_sha256"]
        index = next(i for i, d in digests.items() if d == digest)
        return encoders[index].decode(data).pixels

    return LossyCodec(name, list(encoders), encode, decode), [d[:16] for d in digests.values()]


def measure(c: LossyCodec, setting: Any, name: str, pixels: np.ndarray, repeat: int = 1) -> dict:
    """One point: real bytes, quality of what decodes, median encode and decode seconds over
    ``repeat`` runs."""
    row = _row(name, c.name, setting, pixels=int(pixels.shape[0] * pixels.shape[1]))
    try:
        encode_s, decode_s = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            data = c.encode(pixels, setting)
            encode_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            out = c.decode(data)
            decode_s.append(time.perf_counter() - start)
        row["encode_s"], row["decode_s"] = statistics.median(encode_s), statistics.median(decode_s)
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


def bd_table(cv: dict[str, list[dict]], test: str) -> list[dict]:
    """BD-rate of the curve ``test`` against every other curve that is not one of ours."""
    table = []
    for anchor in (c for c in cv if c != test and c not in ours()):
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
        table.append({"codec": test, "anchor": anchor, "bd_rate_psnr": by_psnr, "bd_rate_ms_ssim": by_ssim})
    return table


def _f(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def report(cv: dict[str, list[dict]], bd: list[dict], env: str, failures: list[dict]) -> str:
    lines = [
        "# Lossy rate-distortion",
        "",
        env,
        "",
        "## BD-rate of ours against each anchor (negative: fewer bits)",
        "",
    ]
    lines += ["| codec | anchor | BD-rate (PSNR) | BD-rate (MS-SSIM dB) |", "|---|---|--:|--:|"]
    lines += [
        f"| {r['codec']} | {r['anchor']} | {_pct(r['bd_rate_psnr'])} | {_pct(r['bd_rate_ms_ssim'])} |" for r in bd
    ]
    lines += ["", "n/a: no common quality range, or fewer than 4 rising points (``jobs.bench.bdrate``).", ""]
    lines += ["## Curves (mean over images at each setting)", ""]
    lines += [
        "| codec | setting (ours: --quality) | images | bpp | PSNR dB | MS-SSIM | encode ms* | decode ms* |",
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
        style = {"marker": "o", "markersize": 3, "label": name, "linewidth": 2.5 if name in ours() else 1.2}
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
    """The lossy bench, in this process or on ``--workers`` Ray actors (the lossless bench's
    runner), its rows logged as they are made so that ``--resume`` goes on where a run stopped;
    ``--repeat`` times each point that many times (medians)."""
    from codec.defaults import DEFAULT_STEPS
    from codec.modelfiles import PACKAGE_MODELS, digest_of, quality_levels
    from jobs.bench.images import list_bench_images
    from jobs.bench.rowlog import RowLog
    from jobs.bench.runners import run_images_on_ray
    from jobs.cli import UsageError, storage_options
    from jobs.runtime import setup_torch

    if args.steps != [DEFAULT_STEPS]:
        raise UsageError("--steps applies to the lossless bench (the learned coder's adaptation), not --lossy")
    setup_torch(args.threads, args.device)
    fs, paths, names = list_bench_images(args.input, storage_options(args.storage_options))
    paths, names = paths[: args.limit], names[: args.limit]
    if not paths:
        print(f"callic bench --lossy: no images in {args.input}", file=sys.stderr)
        return 1
    files = args.lossy_models or [str(PACKAGE_MODELS / f) for f in quality_levels()]
    if not files:
        print("callic bench --lossy: no lossy models (none shipped, none given): anchors only", file=sys.stderr)
    hashes = [digest_of(f).hex()[:16] for f in files]  # from the bytes: the driver loads no model
    points = lossy_points(files)
    settings = {"models": hashes, "device": args.device, "threads": args.threads, "repeat": args.repeat}
    log = RowLog(Path(args.out), settings | _workers(args), args.resume, ROWS, point_key)
    todo = [
        (path, name, frozenset(f"{c}@{s}" for c, s in points if (name, f"{c}@{s}") in log.done))
        for path, name in zip(paths, names, strict=True)
    ]
    todo = [t for t in todo if len(t[2]) < len(points)]

    def on_rows(rows: list[dict]) -> None:
        for row in rows:
            log.add(row)
        if not args.quiet and rows:
            print(f"{rows[0]['image']}: done", file=sys.stderr)

    def lost(task: tuple, reason: str) -> list[dict]:
        return [_row(task[1], c, s, error=reason) for c, s in points if f"{c}@{s}" not in task[2]]

    factory = LossyBenchCodecs(tuple(files), args.device, args.threads)
    if args.workers:
        from pipeline import cluster

        cluster.connect(args.address)
        run_images_on_ray(todo, factory, image_points, (fs, args.repeat), lost, on_rows, args.workers)
    elif todo:
        codecs = factory(None)
        for task in todo:
            on_rows(image_points(codecs, *task, fs, args.repeat))
    rows = [log.done[(n, f"{c}@{s}")] for n in names for c, s in points if (n, f"{c}@{s}") in log.done]
    cv = curves(rows)
    bd = [row for name in ours() for row in bd_table(cv, name)]
    env = (
        f"{len(paths)} images from {args.input}; lossy models {', '.join(hashes) or 'none'}; "
        f"device {args.device}, threads {args.threads or 'default'}"
        + (f", {args.workers} Ray workers" if args.workers else "")
    )
    out = Path(args.out)
    text = report(cv, bd, env, [r for r in rows if "error" in r])
    (out / "lossy-report.md").write_text(text)
    (out / "lossy-curves.json").write_text(json.dumps({"curves": cv, "bd_rate": bd, "environment": env}, indent=1))
    plot(out / "rd.png", cv)
    if not args.quiet:
        print(text)
    return 0


ROWS = "lossy-rows.jsonl"


def point_key(row: dict) -> tuple[str, str]:
    """A lossy row's place: its image, and its codec and setting (``jpeg@50``)."""
    return row["image"], f"{row['codec']}@{row['setting']}"


def _workers(args: argparse.Namespace) -> dict[str, Any]:
    return {"workers": args.workers} if args.workers else {}


@dataclass(frozen=True)
class LossyBenchCodecs:
    """Builds the lossy bench's codecs, in this process or once per Ray worker."""

    files: tuple[str, ...]
    device: str
    threads: int | None

    def __call__(self, resources: Any) -> list[LossyCodec]:
        threads = resources.threads if resources is not None else self.threads
        return lossy_codecs(list(self.files), threads, self.device)


def lossy_codecs(files: list[str], threads: int | None, device: str) -> list[LossyCodec]:
    """Our codec (one setting per model file, its models loaded) first, then the anchors."""
    return [registry_codec(name, files, device)[0] for name in ours() if files] + lossy_anchor_codecs(threads)


def lossy_points(files: list[str]) -> list[tuple[str, Any]]:
    """Every (codec, setting) of ``lossy_codecs``, without loading a model: the driver's list."""
    points = [(name, q) for name in ours() for q in range(1, len(files) + 1)]
    return points + [(c.name, s) for c in lossy_anchor_codecs(None) for s in c.settings]


def image_points(
    codecs: list[LossyCodec], path: str, name: str, skip: frozenset[str], fs: Any, repeat: int = 1
) -> list[dict]:
    """One image through every (codec, setting) not in ``skip``; an unreadable image gives one
    error row per point. The unit of work in this process and on a worker."""
    from jobs.bench.images import load_pixels

    try:
        pixels = load_pixels(fs, path)
    except Exception as exc:  # unreadable, not 8-bit RGB, storage error: recorded, not fatal
        error = f"{type(exc).__name__}: {exc}"
        return [_row(name, c.name, s, error=error) for c in codecs for s in c.settings if f"{c.name}@{s}" not in skip]
    return [measure(c, s, name, pixels, repeat) for c in codecs for s in c.settings if f"{c.name}@{s}" not in skip]


def _row(image: str, codec: str, setting: Any, **fields: Any) -> dict:
    return {"image": image, "codec": codec, "setting": setting, **fields}
