"""``callic demo``: the quick start's job. Archives the bundled sample images with the real
pipeline (a local Ray cluster, local folders, the shipped model, per-image adaptation), restores
them, checks every restored pixel against its source, and prints sizes next to PNG's.

It takes minutes on a CPU, so every phase says what it is doing on stderr: starting Ray and
reading the models (a line each, with its time), archiving and restoring (a bar each that moves
per image, with elapsed time and ETA), checking pixels (a bar). ``--quiet`` keeps only the table.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from codec.images import read_image, write_image_bytes
from pipeline import manifest
from pipeline.storage import Store

SAMPLES = Path(__file__).parent / "samples"


def main(args) -> int:
    from jobs.cli import build_parser

    quiet = bool(getattr(args, "quiet", False))
    out = Path(args.out).resolve()
    archive, restored = out / "archive", out / "restored"
    archive.mkdir(parents=True, exist_ok=True)
    job_id = "demo-" + dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    parser = build_parser()
    flags = ["--quiet"] if quiet else []
    run = ["archive", str(SAMPLES), str(archive), "--job-id", job_id, "--steps", str(args.steps), *flags]
    ns = parser.parse_args(run)
    rc = ns.func(ns)
    if rc != 0:
        raise SystemExit(f"archive job {job_id} did not finish (exit {rc}); see `callic status {archive / job_id}`")
    ns = parser.parse_args(["restore", str(archive / job_id), str(restored), *flags])
    rc = ns.func(ns)
    if rc != 0:
        raise SystemExit(f"restore of {job_id} failed (exit {rc})")

    rows = manifest.load(Store(archive / job_id)).to_pylist()
    lines = []
    bits = png_bits = samples = 0
    bar = {"desc": "checking pixels", "unit": "img", "file": sys.stderr, "dynamic_ncols": True}
    for row in tqdm(rows, disable=quiet or not sys.stderr.isatty(), **bar):
        src, back_img = read_image(SAMPLES / row["source_key"]), read_image(restored / row["source_key"])
        same = src.pixels.dtype == back_img.pixels.dtype and np.array_equal(src.pixels, back_img.pixels)
        if not same:
            raise SystemExit(f"{row['source_key']}: restored pixels differ")
        png = len(write_image_bytes(src, "PNG"))
        n = src.pixels.size
        bits, png_bits, samples = bits + 8 * row["compressed_bytes"], png_bits + 8 * png, samples + n
        adapter_bytes = manifest.facts(row).get("adapter_bytes", 0)
        lines.append(
            f"{row['source_key']:24} {row['width']:>4}x{row['height']:<4} {row['mode']:>5} {row['codec']:>12} "
            f"{row['bpsp']:6.3f} {8 * png / n:8.3f} {adapter_bytes:>7}B {row['encode_s'] or 0:6.2f}"
        )
    head = f"{'image':24} {'size':>9} {'mode':>5} {'codec':>12} {'bpsp':>6} {'PNG bpsp':>8} {'adapters':>8}"
    print(f"{head} {'enc s':>6}", *lines, sep="\n")
    print(
        f"all {len(rows)} samples archived and restored exactly; {bits / samples:.3f} bpsp overall "
        f"(PNG: {png_bits / samples:.3f})\n"
        f"archive job: {archive / job_id} (manifest.parquet; try `callic status {archive / job_id}`)\n"
        f"restored images: {restored}/"
    )
    return 0
