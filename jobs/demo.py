"""``callic demo``: the quick start's job. Encodes every bundled sample, decodes it in a fresh
pass, checks every pixel, writes the restored image, and prints sizes next to PNG's."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import codec
from codec.images import read_image, write_image, write_image_bytes

SAMPLES = Path(__file__).parent / "samples"


def main(args) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = codec.load_model()
    total_bits = total_png = total_samples = 0
    print(f"{'image':24} {'size':>9} {'mode':>5} {'coder':>12} {'bpsp':>6} {'PNG bpsp':>8} {'enc s':>6} {'dec s':>6}")
    for path in sorted(SAMPLES.glob("*.png")):
        raster = read_image(path)
        t0 = time.perf_counter()
        data = codec.encode(raster, model=model)
        t1 = time.perf_counter()
        restored = codec.decode(data, model=model)
        t2 = time.perf_counter()
        if restored.pixels.dtype != raster.pixels.dtype or not np.array_equal(restored.pixels, raster.pixels):
            raise SystemExit(f"{path.name}: restored pixels differ")
        (out / (path.stem + ".cllc")).write_bytes(data)
        write_image(restored, out / path.name)
        samples = raster.pixels.size
        png = len(write_image_bytes(raster, "PNG"))
        meta = codec.info(data)
        total_bits, total_png, total_samples = total_bits + 8 * len(data), total_png + 8 * png, total_samples + samples
        print(
            f"{path.name:24} {raster.width:>4}x{raster.height:<4} {raster.mode:>5} {meta['coder']:>12} "
            f"{8 * len(data) / samples:6.3f} {8 * png / samples:8.3f} {t1 - t0:6.2f} {t2 - t1:6.2f}"
        )
    print(
        f"all {len(list(SAMPLES.glob('*.png')))} samples restored exactly; "
        f"{total_bits / total_samples:.3f} bpsp overall (PNG: {total_png / total_samples:.3f}); output in {out}/"
    )
    return 0
