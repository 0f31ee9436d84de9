"""Compare lossy training runs (ablations at equal steps) by what their exported models really do.

    python bench/cca_ablation.py RUN [RUN ...] --data ~/.cache/callic/data/pkg13 [--limit N]

Each RUN is a ``callic train --codec cca`` folder (its ``model/`` file and ``log.csv``). Every
image is encoded to a real ``.cllc`` and decoded (the reconstruction hash checked), so the bits
per pixel are file sizes, not estimates. Runs trained at the same lambda are compared on the
objective they all minimized, J = lambda * bpp + 0.05 * 255**2 * MSE (lower is better; MSE on
[0, 1] pixels, the training loss's weights), and on bpp and PSNR beside it. The last training log
row's rates (estimated from likelihoods, on training crops) are shown too: the main model's
y rate and the auxiliary model's, whose gap is what the CCA term rewards.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import numpy as np

from codec.cca.loss import MSE_WEIGHT
from codec.cca.weights import load_model_file
from jobs.bench.images import list_bench_images, load_pixels
from jobs.bench.lossy import measure, registry_codec


def run_model(run: Path) -> Path:
    files = sorted((run / "model").glob("cca-*.safetensors"))
    if len(files) != 1:
        raise SystemExit(f"{run}: expected one exported model in model/, found {len(files)}")
    return files[0]


def last_log_row(run: Path) -> dict[str, str]:
    with open(run / "log.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_bpp")]
    return rows[-1] if rows else {}


def evaluate(model_file: Path, images: list[tuple[str, np.ndarray]]) -> dict[str, float]:
    """Each image through the lossy bench's own measurement (real bytes, decoded and checked)."""
    ours, _ = registry_codec("cca", [str(model_file)], "cpu")
    rows = [measure(ours, 1, name, pixels) for name, pixels in images]  # setting 1: the one model file
    failed = [r for r in rows if "error" in r]
    if failed:
        raise RuntimeError(f"{model_file.name}: {failed[0]['image']}: {failed[0]['error']}")
    file = load_model_file(model_file)
    lmbda = file.lmbda
    mse = [10 ** (-r["psnr"] / 10) for r in rows]  # on [0, 1] pixels, from PSNR = 10 log10(1 / MSE)
    return {
        "lmbda": lmbda,
        "bpp": statistics.mean(r["bpp"] for r in rows),
        "psnr": statistics.mean(r["psnr"] for r in rows),
        "J": statistics.mean(lmbda * r["bpp"] + MSE_WEIGHT * m for r, m in zip(rows, mse, strict=True)),
        "slices": "/".join(map(str, file.cfg.slice_sizes)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--data", required=True, help="folder of test images (8-bit RGB)")
    p.add_argument("--limit", type=int, help="first N images only")
    args = p.parse_args(argv)

    fs, paths, names = list_bench_images(str(args.data))
    images = [(name, load_pixels(fs, path)) for path, name in list(zip(paths, names, strict=True))[: args.limit]]
    print(f"{len(images)} images from {args.data}; real file sizes, every file decoded and its hash checked\n")
    print("| run | steps | slices | lambda | J (lower is better) | bpp | PSNR dB | train y bpp* | train aux bpp* |")
    print("|---|--:|---|--:|--:|--:|--:|--:|--:|")
    for run in args.runs:
        r = evaluate(run_model(run), images)
        log = last_log_row(run)
        print(
            f"| {run.name} | {log.get('step', '?')} | {r['slices']} | {r['lmbda']:g} | {r['J']:.2f} | "
            f"{r['bpp']:.4f} | {r['psnr']:.2f} | {log.get('train_y_bpp', '?')} | {log.get('train_aux_bpp', '?')} |",
            flush=True,
        )
    print("\n\\* estimated from likelihoods on the last logged training crops.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
