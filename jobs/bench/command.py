"""``callic bench``: the command line; the lossless benchmark of callic against the classic lossless coders.

Every codec gets the same decoded 8-bit RGB pixel array; every round trip is checked (values,
dtype and shape) and a mismatch is a failure, never a size. Sizes are the real encoded bytes
(callic: the whole ``.cllc`` file, header and checksums included); bpsp = 8 * bytes / (H * W * 3).

Codecs and their settings (imagecodecs; ``numthreads`` = ``--threads`` where the library takes it):

============  ==================================================================================
callic        ``codec.api.encode`` / ``decode`` with the given (or shipped) model; ``--steps`` and
              ``--adapt-order`` (comma lists) run one variant per (T, order), named ``callic``
              for T = 0 and ``callic-t<T>[-<order>]`` otherwise; sizes include the adapters;
              always the learned coder's file (``coder="learned"``), never JPEG-XL's
jxl-e7/-e9    JPEG XL ``lossless=True, effort=7/9`` (``level=100`` is *not* lossless in imagecodecs)
webp-m6       WebP lossless ``method=6, level=100`` (in lossless mode level is the effort: cwebp -z 9)
jpeg2000      reversible 5/3 wavelet, ``mct=True`` (the reversible colour transform RCT), J2K codestream
jpegls        JPEG-LS (CharLS) ``level=0`` (NEAR=0, lossless), sample-interleaved, after the HP1 colour
              transform (R-G, G, B-G, mod 256) done here: imagecodecs exposes none of CharLS's own
              HP1-HP3 transforms, and without one JPEG-LS codes RGB about 25% larger
png           libpng, zlib ``level=9`` (best), libpng's default adaptive filtering
============  ==================================================================================

Output in ``--out``: ``results.parquet`` (one row per image and codec), ``report.md`` (per-image
bpsp, per-codec summary, environment) and ``bpsp.png``, each written atomically at the end; and
``rows.jsonl``, every row as soon as it is finished (``jobs.bench.rowlog``). ``--resume`` keeps the rows
an earlier run with the same settings finished (failures included) and runs only the missing ones.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codec.defaults import CALIBRATION_SCHEMES, DEFAULT_CALIBRATION, DEFAULT_STEPS, MIN_ADAPT_PIXELS
from jobs.adaptargs import ADAPT_LAYERS, ADAPT_LAYERS_HELP, adapt_config, adapt_fields, add_adapt_arguments
from jobs.bench.codecs import (
    CODEC_NAMES,
    BenchCodecs,
    Variant,
    adapts,
    build_codecs,
    comma_list,
    expand_codecs,
    model_file_hash,
    parse_codecs,
)
from jobs.bench.images import SUFFIXES, list_bench_images
from jobs.bench.report import environment, summarize, summary_table, write_report
from jobs.bench.rowlog import RowLog
from jobs.bench.runners import run, run_on_ray
from jobs.cli import STORAGE_OPTIONS_HELP, storage_options
from jobs.runtime import setup_torch


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _int_list(text: str) -> list[int]:
    values = list(dict.fromkeys(int(v) for v in comma_list(text)))
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError("need comma-separated integers >= 0")
    return values


def _calibration_list(text: str) -> list[int]:
    values = _int_list(text)
    bad = [v for v in values if v not in CALIBRATION_SCHEMES]
    if bad:
        raise argparse.ArgumentTypeError(f"calibration schemes are {CALIBRATION_SCHEMES}, not {bad[0]}")
    return values


def _names_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    values = comma_list(text)
    if not values or set(values) - set(allowed):
        raise argparse.ArgumentTypeError(f"{what} are {', '.join(allowed)}")
    return values


def _layers_list(text: str) -> list[str]:
    return _names_list(text, ADAPT_LAYERS, "layers")


def _order_list(text: str) -> list[str]:
    from codec.mgcf.rpft import ORDERS

    return _names_list(text, ORDERS, "orders")


def variants(
    steps: Sequence[int],
    orders: Sequence[str],
    calibrations: Sequence[int] = (DEFAULT_CALIBRATION,),
    layers: Sequence[str] = ("all",),
) -> list[Variant]:
    """One variant per (T, order, calibration, layers); T = 0 has no order or layers to vary."""
    return list(
        dict.fromkeys(
            Variant(t, o if t else "rate", c, la if t else "all")
            for t in steps
            for o in orders
            for la in layers
            for c in calibrations
        )
    )


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on the ``callic`` subcommands."""
    p = sub.add_parser("bench", help="lossless benchmark: callic vs JPEG XL, WebP, JPEG 2000, JPEG-LS, PNG")
    p.add_argument("input", help="folder or fsspec URL (file://..., s3://bucket/prefix), searched recursively")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary (errors still show)")
    p.add_argument("--out", default="callic-bench", help="folder for results.parquet, report.md and bpsp.png")
    p.add_argument("--storage-options", help=STORAGE_OPTIONS_HELP + " of DATA")
    p.add_argument(
        "--codecs",
        type=parse_codecs,
        default=list(CODEC_NAMES),
        help=f"comma-separated, in table order (default: {','.join(CODEC_NAMES)})",
    )
    p.add_argument("--model", help="model file for callic; default: the shipped model")
    p.add_argument("--threads", type=_positive, help="torch threads (and the anchors' numthreads)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--limit", type=_positive, help="only the first N images (in sorted order)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows an earlier run into --out finished (same settings) and run only the rest",
    )
    p.add_argument("--repeat", type=_positive, default=1, help="timing runs per image and codec; the median is kept")
    p.add_argument(
        "--steps",
        type=_int_list,
        default=[DEFAULT_STEPS],
        help=f"callic fine-tuning steps T, comma list (default {DEFAULT_STEPS}, as encode and archive; "
        f"images under {MIN_ADAPT_PIXELS} pixels are never adapted)",
    )
    p.add_argument(
        "--adapt-order", type=_order_list, default=["rate"], help="RPFT patch orders, comma list (rate,random,all)"
    )
    p.add_argument("--adapt-layers", type=_layers_list, default=["all"], help=ADAPT_LAYERS_HELP + "; comma list")
    p.add_argument(
        "--calibration",
        type=_calibration_list,
        default=[DEFAULT_CALIBRATION],
        help=f"callic calibration schemes, comma list (0: none; default {DEFAULT_CALIBRATION})",
    )
    p.add_argument(
        "--workers",
        type=_positive,
        help="run on Ray actors (the archive pipeline's machinery): N workers, each with its share of the cores",
    )
    p.add_argument("--address", help="Ray cluster to join with --workers (default: a local one)")
    lossy_help = "lossy benchmark instead: cca rate points vs JPEG, WebP, AVIF, JPEG-XL (jobs/bench/lossy.py)"
    p.add_argument("--lossy", action="store_true", help=lossy_help)
    p.add_argument("--lossy-models", type=comma_list, help="cca model files, one per rate point (default: shipped)")
    add_adapt_arguments(p)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when the report is written (failures are in it), 1 if there is nothing to run."""
    if args.lossy:
        from jobs.bench import lossy

        return lossy.main(args)
    setup_torch(args.threads, args.device)
    fs, paths, names = list_bench_images(args.input, storage_options(args.storage_options))
    paths, names = paths[: args.limit], names[: args.limit]
    if not paths:
        print(f"callic bench: no {'/'.join(sorted(SUFFIXES))} images in {args.input}", file=sys.stderr)
        return 1
    chosen = variants(args.steps, args.adapt_order, args.calibration, args.adapt_layers)
    for v in chosen:  # flags checked before any work
        adapt_config(args, v.steps, v.order, v.layers)
    adapt = adapt_fields(args)
    if args.workers:  # the workers build their own; here only the model's hash is needed
        codecs, model_hash = [], (model_file_hash(args.model) if any(map(adapts, args.codecs)) else None)
    else:
        codecs, model_hash = build_codecs(args.codecs, args.model, args.device, args.threads, chosen, adapt)
    codec_names = expand_codecs(args.codecs, chosen)
    settings = {
        "model": model_hash,
        "device": args.device,
        "threads": args.threads,
        **({"workers": args.workers} if args.workers else {}),
        "repeat": args.repeat,
        **{k: getattr(args, k) for k in ("lr", "adapt_patches", "lora_rank", "tucker_ranks", "adapt_min_pixels")},
        **({"adapt_stop_below": args.adapt_stop_below} if args.adapt_stop_below else {}),  # older runs resume
    }
    log = RowLog(Path(args.out), settings, args.resume)
    if args.workers:
        from pipeline import cluster

        cluster.connect(args.address)
        factory = BenchCodecs(tuple(args.codecs), args.model, args.device, tuple(chosen), tuple(adapt.items()))
        rows = run_on_ray(fs, paths, names, factory, codec_names, args.repeat, log, args.workers)
    else:
        rows = run(fs, paths, names, codecs, args.repeat, log, quiet=args.quiet)
    env = environment(args.device, model_hash, args.workers)
    write_report(Path(args.out), rows, codec_names, env)
    summary, common, reference = summarize(rows, codec_names)
    failures = sum(s["failures"] for s in summary)
    if failures:
        print(f"{failures} failed runs: see {Path(args.out) / 'report.md'}", file=sys.stderr)
    if not args.quiet:
        print(f"{len(paths)} images, mean bpsp over the {len(common)} that every codec verified")
        print(summary_table(summary, reference))
        print(f"results in {args.out}/ (results.parquet, report.md, bpsp.png)")
    return 0
