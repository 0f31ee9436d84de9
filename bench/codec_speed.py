"""Encode / decode seconds of the learned codec on one photo, with JPEG-XL (effort 7) timed in the
same run on the same pixels, as a ratio. Medians over ``--repeat`` runs.

    python bench/codec_speed.py --image kodim23.png --threads 2 [--device cuda]
    python bench/codec_speed.py --image kodim23.png --threads 1 --calibration 0,1 --crop 256

The learned coder is forced and not adapted (T = 0), so the times are those of the network and
the coder, not of RPFT or of the JPEG-XL fallback. With several ``--calibration`` schemes, the
runs alternate between them (one run of each per round, so load on the machine falls on all
alike) and each is reported as a ratio to the first. ``--crop N``: the top-left N x N pixels.

Also reports the decoder's arithmetic rate: the GFLOP of one full forward pass of the network
(all positions, counted from the configuration) divided by the decode time.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import imagecodecs
import numpy as np
import torch

import codec
from codec.images import read_image
from codec.mgcf.config import MGCFConfig
from codec.mgcf.wavefront import kernel_offsets


def forward_gflop(cfg: MGCFConfig, pixels: int) -> float:
    """Multiply-adds x 2 of one forward pass over ``pixels`` positions (masked taps only)."""
    c, hidden = cfg.width, cfg.width * cfg.mlp_ratio
    macs = len(kernel_offsets(3, True)) * 3 * c
    macs += cfg.depth * (3 * c * c + len(kernel_offsets(cfg.kernel, False)) * c + 2 * c * hidden)
    macs += c * cfg.head_channels
    return 2 * macs * pixels / 1e9


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True, help="an 8-bit RGB photo, e.g. kodim23 (768x512)")
    ap.add_argument("--model", help="model file; default: the shipped model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--calibration", default="1", help="calibration schemes, comma list (first: the reference)")
    ap.add_argument("--crop", type=int, default=0, help="time the top-left N x N pixels only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    schemes = [int(v) for v in args.calibration.split(",")]
    raster = read_image(args.image)
    pixels = raster.pixels[..., :3]
    if args.crop:
        pixels = pixels[: args.crop, : args.crop]
    pixels = np.ascontiguousarray(pixels)
    model = codec.load_model(args.model, args.device)
    net = model.exact
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def enc(scheme: int) -> bytes:
        data = codec.encode(pixels, model=model, device=args.device, adapt=None, coder="learned", calibration=scheme)
        sync()
        return data

    def dec(data: bytes):
        out = codec.decode(data, model=model, device=args.device)
        sync()
        return out

    enc(schemes[0])  # warm-up (allocator, caches)
    t_enc, t_dec, files = {s: [] for s in schemes}, {s: [] for s in schemes}, {}
    for _ in range(args.repeat):
        for scheme in schemes:
            start = time.perf_counter()
            files[scheme] = enc(scheme)
            t_enc[scheme].append(time.perf_counter() - start)
            start = time.perf_counter()
            out = dec(files[scheme])
            t_dec[scheme].append(time.perf_counter() - start)
            if not np.array_equal(out.pixels, pixels) or out.pixels.dtype != pixels.dtype:
                raise SystemExit(f"round trip failed (calibration {scheme})")
    t_jenc, jxl = timed(lambda: imagecodecs.jpegxl_encode(pixels, lossless=True, effort=7), args.repeat)
    t_jdec, jout = timed(lambda: imagecodecs.jpegxl_decode(jxl), args.repeat)
    if not np.array_equal(jout, pixels):
        raise SystemExit("JPEG-XL round trip failed")
    h, w = pixels.shape[:2]
    gflop = forward_gflop(net.cfg, h * w)
    print(
        f"image {args.image} {w}x{h}; device {args.device}; threads {args.threads}; "
        f"torch {torch.__version__}; {platform.processor() or platform.machine()}"
    )
    print(f"model {model.digest.hex()[:16]} {net.cfg}")
    print(f"{'codec':18} {'bpsp':>7} {'encode s':>9} {'decode s':>9}   (median of {args.repeat})")
    med = {s: (statistics.median(t_enc[s]), statistics.median(t_dec[s])) for s in schemes}
    for scheme in schemes:
        bpsp = 8 * len(files[scheme]) / pixels.size
        print(f"{f'callic cal {scheme}':18} {bpsp:7.3f} {med[scheme][0]:9.3f} {med[scheme][1]:9.3f}")
    print(f"{'JPEG-XL effort 7':18} {8 * len(jxl) / pixels.size:7.3f} {t_jenc:9.3f} {t_jdec:9.3f}")
    ref = schemes[0]
    for scheme in schemes[1:]:
        print(
            f"ratio cal {scheme} / cal {ref}: encode {med[scheme][0] / med[ref][0]:.3f}, "
            f"decode {med[scheme][1] / med[ref][1]:.3f}"
        )
    t_enc, t_dec = med[ref]
    print(f"ratio callic cal {ref} / JPEG-XL e7: encode {t_enc / t_jenc:.1f}x, decode {t_dec / t_jdec:.1f}x")
    print(f"forward pass {gflop:.1f} GFLOP; decode reached {gflop / t_dec:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
