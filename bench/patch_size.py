"""Bits and decode seconds of one model's weights coding with P x P patches, for several P.

The patch size is a model choice (``MGCFConfig.patch``, recorded in the model file and in every
``.cllc`` header), not a weight: the same weights code any P, and a bigger P leaves fewer pixels
at a patch border without context (fewer bits), at a decoder cost that grows with P (a wavefront
over a P x P patch takes about 3P steps, each a small batch). This bench re-saves the given model
with each ``--patches`` value (a new file, a new hash, in a temporary folder), then codes every
image with each, through the real exact path (T = 0, the learned coder, real file sizes), decodes
each file on the CPU and compares pixels, dtype and shape. The variants run interleaved per image
(P = 64, 128, ... for image 1, then for image 2), so load on the machine hits them alike. Each
variant codes with the same pixels per stream (``codec.defaults.patches_per_stream``), so the
decoder's memory bound is the same.

    OMP_NUM_THREADS=1 python bench/patch_size.py ~/.cache/callic/data/pkg13/*.png --patches 64,128

Prints one row per image and variant, then per variant: total bytes, mean bpsp, the ratio of
bytes to the first variant's, and median encode and decode seconds (and their ratios).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import codec.api as api
from codec.defaults import patches_per_stream
from codec.images import read_image
from codec.mgcf.weights import load_model_file, save_model
from codec.modelfiles import default_model_path
from codec.raster import Raster


def repatched(model_path: Path, patch: int, directory: str) -> api.Model:
    """The model in ``model_path`` re-saved with patch size ``patch`` (same weights)."""
    float_model = load_model_file(model_path).float_model()
    float_model.cfg = dataclasses.replace(float_model.cfg, patch=patch)
    return api.load_model(str(save_model(float_model, directory)))


def code_once(model: api.Model, raster: Raster) -> tuple[int, float, float]:
    """(bytes, encode s, decode s) of one image, decoded and compared."""
    per = patches_per_stream(model.exact.cfg.patch)
    start = time.perf_counter()
    data = api.encode(raster, model=model, coder="learned", adapt=None, patches_per_stream=per)
    enc = time.perf_counter() - start
    start = time.perf_counter()
    back = api.decode(data, model=model)
    dec = time.perf_counter() - start
    if back.pixels.dtype != raster.pixels.dtype or back.pixels.shape != raster.pixels.shape:
        raise SystemExit(f"P={model.exact.cfg.patch}: decoded dtype/shape differ")
    if not np.array_equal(back.pixels, raster.pixels):
        raise SystemExit(f"P={model.exact.cfg.patch}: decoded pixels differ")
    return len(data), enc, dec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--model", type=Path, default=None, help="model file (default: the shipped model)")
    ap.add_argument("--patches", default="64,128", help="comma-separated patch sizes")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(p) for p in args.patches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        models = {p: repatched(args.model or default_model_path(), p, tmp) for p in sizes}
        rows: dict[int, list[tuple[int, float, float, int]]] = {p: [] for p in sizes}
        print("image patch pixels bytes bpsp encode_s decode_s", flush=True)
        for path in args.images:
            raster = read_image(path.read_bytes())
            subpixels = raster.height * raster.width * 3
            for p in sizes:
                size, enc, dec = code_once(models[p], raster)
                rows[p].append((size, enc, dec, subpixels))
                print(
                    f"{path.name} {p} {subpixels // 3} {size} {8 * size / subpixels:.4f} {enc:.2f} {dec:.2f}",
                    flush=True,
                )
    base = sizes[0]
    print("\npatch total_bytes mean_bpsp bytes_ratio median_encode_s median_decode_s encode_ratio decode_ratio")
    for p in sizes:
        total = sum(r[0] for r in rows[p])
        mean_bpsp = statistics.mean(8 * r[0] / r[3] for r in rows[p])
        enc, dec = statistics.median(r[1] for r in rows[p]), statistics.median(r[2] for r in rows[p])
        base_enc, base_dec = statistics.median(r[1] for r in rows[base]), statistics.median(r[2] for r in rows[base])
        base_total = sum(r[0] for r in rows[base])
        print(
            f"{p} {total} {mean_bpsp:.4f} {total / base_total:.4f} {enc:.2f} {dec:.2f} "
            f"{enc / base_enc:.3f} {dec / base_dec:.3f}"
        )


if __name__ == "__main__":
    main()
