"""Where per-image adaptation starts to pay: ``codec.defaults.MIN_ADAPT_PIXELS``.

Center crops of the given photos at each size, coded with the learned coder at T = 0 and with
``DEFAULT_STEPS`` of adaptation (what ``codec.api.encode_many(..., coder="learned")`` does, without
its size gate): the bytes of both, whether the adapters were kept, JPEG-XL's bytes, and the seconds
of the pre-trained file and of adaptation on top. One row per crop on stdout::

    OMP_NUM_THREADS=1 python bench/min_adapt_pixels.py 64,96,128,192,256 ~/.cache/callic/data/pkg13/flower.png
"""

from __future__ import annotations

import sys
import time

import numpy as np
from PIL import Image

import codec.api as api
from codec.defaults import (
    DEFAULT_ADAPT_PATCHES,
    DEFAULT_CALIBRATION,
    DEFAULT_JXL_EFFORT,
    DEFAULT_STEPS,
    patches_per_stream,
)
from codec.mgcf import rpft
from codec.mgcf.coder import LearnedFile
from codec.mgcf.rpft import AdaptConfig
from codec.raster import Raster
from codec.report import EncodeReport


def crop_row(model: api.Model, name: str, img: np.ndarray, size: int, cfg: AdaptConfig) -> str:
    """One crop's line: sizes without and with adaptation, JPEG-XL's, and the seconds of each."""
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    raster = Raster.from_array(np.ascontiguousarray(img[y : y + size, x : x + size]))
    report = EncodeReport()
    start = time.perf_counter()
    per = patches_per_stream(model.exact.cfg.patch)
    learned = LearnedFile.code(raster, model, per, DEFAULT_JXL_EFFORT, report, DEFAULT_CALIBRATION)
    base_s, base = time.perf_counter() - start, len(learned.data)
    start = time.perf_counter()
    (adapted,) = rpft.adapt(model.float_model("cpu"), [learned.rgb], cfg)
    learned.try_adapters(model, adapted, report)
    extra_s = time.perf_counter() - start
    jxl = len(api._classical_file(raster, DEFAULT_JXL_EFFORT, report, "classical_s")[1])
    saved = base - len(learned.data)
    return (
        f"{name} {size} {base} {len(learned.data)} {report.adapters} {saved} {100 * saved / base:.2f} "
        f"{jxl} {base_s:.1f} {extra_s:.1f}"
    )


def main(argv: list[str]) -> None:
    sizes = [int(s) for s in argv[0].split(",")]
    model = api.load_model()
    cfg = AdaptConfig(steps=DEFAULT_STEPS, max_patches=DEFAULT_ADAPT_PATCHES, min_pixels=0)
    print("file size base_bytes adapted_bytes kept saved_bytes saved_pct jxl_bytes base_s extra_s", flush=True)
    for path in argv[1:]:
        img = np.asarray(Image.open(path).convert("RGB"))
        for size in sizes:
            print(crop_row(model, path.rsplit("/", 1)[-1], img, size, cfg), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
