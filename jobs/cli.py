"""The ``callic`` command line.

Exit codes: 0 success, 1 other error, 2 unreadable input image, 3 corrupt or truncated file,
4 unsupported (format version, mode, output format), 5 model not installed, 6 pixel hash mismatch,
64 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import codec
from codec import rpft
from codec.container import read_cllc
from codec.errors import CallicError
from codec.images import image_format, read_image, write_image_bytes
from jobs import archive, bench, datasets, train
from jobs.adaptargs import adapt_config, add_adapt_arguments
from jobs.atomic import write_atomically
from jobs.runtime import setup_torch
from pipeline.storage import redact

EXIT_USAGE = 64
DEFAULT_STEPS = 10
THREADS_HELP = "torch CPU threads (default: $OMP_NUM_THREADS, else the cores this process may use; see README)"


def print_report(report: codec.api.EncodeReport, samples: int) -> None:
    stages = ("rate_estimate_s", "fine_tune_s", "exact_pass_s", "coding_s", "verify_s")
    times = ", ".join(
        f"{name[:-2].replace('_', ' ')} {report.timings[name]:.2f} s" for name in stages if name in report.timings
    )
    print(f"  stages: {times}")
    if report.steps:
        base, adapted = report.estimated_base_bits, report.estimated_adapted_bits
        print(
            f"  adaptation: T={report.steps}, adapters {report.adapters} ({report.adapter_bytes} bytes); "
            f"estimated image bpsp {base / samples:.4f} without, {adapted / samples:.4f} with (+ adapters "
            f"{8 * report.adapter_bytes / samples:.4f})"
        )


def cmd_encode(args) -> int:
    setup_torch(args.threads, args.device)
    raster = read_image(args.input)
    if args.codec == "cca":
        return encode_lossy(args, raster)
    model = codec.load_model(args.model, args.device) if raster.mode in ("RGB", "RGBA") else None
    start = time.perf_counter()
    [(data, report)] = codec.api.encode_many(
        [raster],
        model=model,
        device=args.device,
        verify=args.verify,
        patches_per_stream=args.patches_per_stream,
        adapt=adapt_config(args, args.steps),
    )
    seconds = time.perf_counter() - start
    write_atomically(args.output, data)
    meta = codec.info(data)
    print(
        f"{args.input} -> {args.output}: {meta['bytes']} bytes, {meta['bits_per_subpixel']:.3f} bpsp, "
        f"{meta['coder']}, {seconds:.2f} s{' (verified)' if args.verify else ''}"
    )
    if args.verbose:
        print_report(report, raster.pixels.size)
    return 0


def encode_lossy(args, raster) -> int:
    from codec.lossy.api import encode_lossy as encode
    from codec.lossy.api import load_lossy_model

    if raster.mode == "RGBA" or (raster.pixels.dtype == np.uint8 and raster.mode in ("L", "P")):
        raster = codec.Raster.from_array(np.ascontiguousarray(raster_rgb(raster)))
    model = load_lossy_model(args.model, args.quality, args.device)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    data = encode(raster, model=model, verify=args.verify, timings=timings)
    seconds = time.perf_counter() - start
    write_atomically(args.output, data)
    bpp = 8 * len(data) / (raster.width * raster.height)
    print(
        f"{args.input} -> {args.output}: {len(data)} bytes, {bpp:.3f} bpp, cca (lossy, model "
        f"{model.digest.hex()[:16]}), {seconds:.2f} s{' (verified)' if args.verify else ''}"
    )
    if args.verbose:
        print("  stages: " + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in timings.items()))
    return 0


def raster_rgb(raster) -> np.ndarray:
    """8-bit gray, palette or RGBA pixels as RGB, for the lossy codec (alpha is dropped)."""
    from PIL import Image

    if raster.mode == "RGBA":
        return raster.pixels[..., :3]
    if raster.mode == "P":
        image = Image.fromarray(raster.pixels, "P")
        image.putpalette(raster.palette, raster.palette_mode or "RGB")
        return np.asarray(image.convert("RGB"))
    return np.repeat(raster.pixels[..., None], 3, axis=2)


def cmd_decode(args) -> int:
    setup_torch(args.threads, "cpu")
    fmt = image_format(args.output)  # refuse an unknown output format before decoding
    start = time.perf_counter()
    data = read_cllc(args.input)
    model = lossy = None
    if args.model and codec.info(data)["coder"] == "cca":
        from codec.lossy.api import load_lossy_model

        lossy = load_lossy_model(args.model)
    elif args.model:
        model = codec.load_model(args.model)
    raster = codec.decode(data, model=model, lossy_model=lossy)
    write_atomically(args.output, write_image_bytes(raster, fmt))
    print(
        f"{args.input} -> {args.output}: {raster.width}x{raster.height} {raster.mode}, "
        f"{time.perf_counter() - start:.2f} s, pixels verified"
    )
    return 0


def cmd_info(args) -> int:
    print(json.dumps(codec.info(read_cllc(args.input)), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callic", description="Learned lossless image compression (CALLIC).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("encode", help="compress an image file to .cllc")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--verify", action="store_true", help="decode on the CPU and compare before writing")
    p.add_argument("--model", help="model file (.safetensors); default: the shipped model")
    p.add_argument("--codec", choices=["callic", "cca"], default="callic",
                   help="callic: lossless (default); cca: the lossy codec (8-bit RGB; alpha dropped)")  # fmt: skip
    p.add_argument("--quality", type=int, help="cca: shipped rate point 1..N, higher is better (default N)")
    p.add_argument(
        "--patches-per-stream",
        type=int,
        default=codec.api.DEFAULT_PATCHES_PER_STREAM,
        help="patches per independently coded stream (bounds the decoder's memory)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print the time of each stage and the adaptation")
    steps_help = f"fine-tuning steps T (0: none; default {DEFAULT_STEPS})"
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=steps_help)
    p.add_argument("--adapt-order", choices=rpft.ORDERS, default="rate", help="patch order (rate = RPFT)")
    add_adapt_arguments(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decompress a .cllc file to PNG, TIFF, PPM or BMP")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--model", help="model file, if the one the file names is not installed")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", help="print what a .cllc file holds")
    p.add_argument("input")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="archive and restore the bundled sample images through the pipeline")
    p.add_argument("--out", default="callic-demo", help="folder for the archive and the restored images")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"adaptation steps (default {DEFAULT_STEPS})")
    p.set_defaults(func=lambda a: __import__("jobs.demo", fromlist=["main"]).main(a))

    train.add_parser(sub)
    datasets.add_parser(sub)
    bench.add_parser(sub)
    archive.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    try:
        return args.func(args)
    except CallicError as exc:
        print(f"callic: error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"callic: error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. disk full while writing
        print(f"callic: error: {redact(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
