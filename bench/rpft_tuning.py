"""RPFT settings against the seconds they cost (issue 17, item 3): which layers adapt, T, the
learning rate, patches per step. Estimated, not file sizes: the float model's bits of the whole
image with the quantized adapters (``codec.mgcf.rpft.Adapted.adapted_bits``) plus the real ADPT
section's bytes, against the float model's bits without adapters. Real files: ``callic bench``.

Each variant is ``name:key=value,...`` over ``codec.mgcf.rpft.AdaptConfig`` fields (``steps``,
``layers``, ``lr``, ``max_patches``, ``b``, ``d``, ``e``, ``stop_below`` (early stopping: ``steps``
is then a budget; the row's ``steps`` say how many ran); ``aware=1``: RPFT's loss through
calibration's corrections, ``codec.mgcf.calibration_loss``); the variants run one after the
other on each image, so load on the machine falls on all of them alike. Fine-tuning seconds are
``AdaptConfig``'s own clock (the T steps and the final estimate, not the rate estimate).

With ``aware=1`` the row's base, adapted and net bits are after the oracle corrections (what that
RPFT minimises); only the calibrated columns compare across variants.

``--calibrated``: also the float estimate of the bits with ``codec.mgcf.calibration``'s correction
(``bench/calibration_estimate.py``'s variant closest to scheme 1), of the base model and of each
adapted one: does RPFT still pay once the coder calibrates itself?

    python bench/rpft_tuning.py ~/.cache/callic/data/pkg13 --max-pixels 2e5 \\
        --variant all10:steps=10 --variant last10:steps=10,layers=last [--out rows.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import types
from pathlib import Path

import numpy as np
import torch

from codec.api import load_model
from codec.defaults import DEFAULT_ADAPT_PATCHES, DEFAULT_STEPS, patches_per_stream
from codec.images import read_image
from codec.mgcf import adapters
from codec.mgcf.coder import with_adapters
from codec.mgcf.rpft import AdaptConfig, adapt

sys.path.insert(0, str(Path(__file__).parent))  # the sibling bench script, also when imported
from calibration_estimate import VARIANTS, centre_crop, estimate  # noqa: E402

DEFAULT_VARIANTS = [
    f"all{DEFAULT_STEPS}:steps={DEFAULT_STEPS}",
    f"last{DEFAULT_STEPS}:steps={DEFAULT_STEPS},layers=last",
    f"head{DEFAULT_STEPS}:steps={DEFAULT_STEPS},layers=head",
]


def parse_variant(text: str) -> tuple[str, AdaptConfig, int]:
    """``name:key=value,...`` -> (name, config, calibration scheme RPFT trains for: ``aware=1``);
    unknown keys are refused."""
    name, _, spec = text.partition(":")
    kwargs: dict = {"max_patches": DEFAULT_ADAPT_PATCHES, "min_pixels": 0}
    aware = 0
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key == "aware":
            aware = int(value)
            continue
        if key not in ("steps", "layers", "lr", "max_patches", "b", "d", "e", "seed", "stop_below"):
            raise SystemExit(f"variant {name}: unknown setting {key!r}")
        floats = ("lr", "b", "d", "e", "stop_below")
        kwargs[key] = value if key == "layers" else float(value) if key in floats else int(value)
    return name, AdaptConfig(**kwargs), aware


def calibrated_bpsp(px: np.ndarray, net) -> float:
    """Float estimate of the bits with calibration (``bench/calibration_estimate.py``)."""
    variant = next(v for v in VARIANTS if v.name == "regress-allch")
    return estimate(px, types.SimpleNamespace(exact=net), [variant], patches_per_stream(net.cfg.patch))[variant.name]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--model")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--max-pixels", type=float, default=4e5, help="larger images: a centre crop of about this many")
    ap.add_argument("--variant", action="append", help="name:key=value,... (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calibrated", action="store_true", help="also the calibrated bits (float estimate)")
    ap.add_argument("--out", help="JSON lines, one per image and variant")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    model = load_model(args.model)
    net = model.float_model("cpu")
    lut = model.exact.luts["sigmoid"]
    rows = []
    for path in sorted(Path(args.folder).glob("*.png"))[: args.limit]:
        px = read_image(path).pixels
        if px.ndim != 3 or px.shape[2] != 3 or px.dtype != np.uint8:
            continue
        px = centre_crop(px, args.max_pixels)
        subpixels = px.size
        base_cal = calibrated_bpsp(px, model.exact) if args.calibrated else None
        for name, cfg, aware in variants:
            out = adapt(net, [px], cfg, calibration=aware)[0]
            section = adapters.encode_section(model.exact.cfg, out.adapters, lut)
            row = {
                "image": path.name,
                "variant": name,
                "pixels": px.shape[0] * px.shape[1],
                "base_bpsp": out.base_bits / subpixels,
                "adapted_bpsp": out.adapted_bits / subpixels,
                "net_bpsp": (out.adapted_bits + 8 * len(section)) / subpixels,
                "section_bytes": len(section),
                "steps": out.steps,
                "fine_tune_s": out.timings["fine_tune_s"],
                "rate_estimate_s": out.timings["rate_estimate_s"],
            }
            row["gain"] = 1 - min(row["net_bpsp"], row["base_bpsp"]) / row["base_bpsp"]
            if base_cal is not None:
                cal = calibrated_bpsp(px, with_adapters(model.exact, out.adapters)) + 8 * len(section) / subpixels
                row.update(base_cal_bpsp=base_cal, net_cal_bpsp=cal, cal_gain=1 - min(cal, base_cal) / base_cal)
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print("variant, mean gain (adapters kept only where they pay), median fine-tune s (estimated bits):")
    for name, _, _ in variants:
        mine = [r for r in rows if r["variant"] == name]
        if mine:
            gain = 100 * statistics.mean(r["gain"] for r in mine)
            secs = statistics.median(r["fine_tune_s"] for r in mine)
            cal = f"; calibrated {100 * statistics.mean(r['cal_gain'] for r in mine):.2f}%" if args.calibrated else ""
            print(f"  {name:12} {gain:6.2f}%  {secs:7.1f} s  ({len(mine)} images){cal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
