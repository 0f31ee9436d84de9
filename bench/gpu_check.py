"""GPU-encode -> CPU-decode exactness, codec timings and batched adaptation, for ``bench/gpu_session.sh``.

    python bench/gpu_check.py PHOTOS --out check.json --device cuda [--codec callic|cca] [--model FILE]

What it does, in this order (``check.json`` is rewritten after each part, so a run stopped by its
time limit still leaves what it measured; past ``--max-seconds`` the timings not yet begun are
skipped and named in ``skipped``):

1. Exactness. Every photo is encoded on ``--device`` (lossless: at each ``--steps`` T, with the
   ``learned`` coder, adaptation allowed on any size: ``min_pixels`` 0, at most
   ``--adapt-patches`` patches per step as ``callic encode``), then decoded on the CPU with a
   model loaded on the CPU, in ``--cpu-workers`` processes of one thread each; the decoded
   pixels are compared with the original (values, dtype and shape: ``jobs.bench.measure.mismatch``); a
   lossy file (``--codec cca``) is compared with the reconstruction its encoder returned. A
   decoder error (e.g. the stored hash does not match) counts as a mismatch, with its message.
   Where adaptation at T > 0 dropped the adapters (they did not pay for their bits, common on
   small crops), the merged-adapter path would go unchecked, so the same adapters are also put
   into a bench-only file (``forced``) and checked the same way.
2. Timings, medians over the photos: encode at each T on ``--device`` (after one untimed warm-up
   encode per T, which also takes CUDA's start-up out), the CPU decodes of part 1, and decode on
   ``--device`` (also checked there: ``device_decode_exact``).
3. Batched adaptation (lossless only): ``codec.mgcf.rpft.adapt``, the one batched fine-tuning API
   (``encode_many`` calls it once for all its images), at T = ``--adapt-steps`` on batches of
   ``--batches`` photos (cycled when a batch is larger than the photo set), after a warm-up:
   images per second of fine-tuning alone (rate estimate included, exact coding excluded).

Exit code 0 when every file decoded exactly, 1 when one did not (the mismatches are in the JSON
and printed), 2 for any other failure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

import codec
from codec.defaults import DEFAULT_CALIBRATION, patches_per_stream
from codec.errors import CallicError
from codec.images import read_image
from codec.mgcf import adapters, rpft
from codec.mgcf.coder import LearnedFile, with_adapters
from codec.mgcf.rpft import AdaptConfig
from codec.report import EncodeReport
from jobs.bench.measure import mismatch


@dataclass
class Coded:
    """One file to check: what it is, its bytes, and the pixels it must decode to."""

    photo: str
    steps: int | str
    data: bytes
    expected: np.ndarray
    adapters: str = "none"
    encode_s: float = 0.0


# ------------------------------------------------------------------------------------ decoding

_CPU_MODEL: dict[str, Any] = {}


def _load_cpu_model(codec_name: str, model_path: str | None) -> None:
    """Load the CPU model once per process (the pool's initializer, or in-process)."""
    torch.set_num_threads(1)
    if codec_name == "cca":
        from codec.cca.api import load_lossy_model

        _CPU_MODEL["model"] = load_lossy_model(model_path, device="cpu")
    else:
        _CPU_MODEL["model"] = codec.load_model(model_path, "cpu")
    _CPU_MODEL["codec"] = codec_name


def _decode_cpu(data: bytes) -> np.ndarray:
    model = _CPU_MODEL["model"]
    if _CPU_MODEL["codec"] == "cca":
        return codec.decode(data, model=model, device="cpu").pixels
    return codec.decode(data, model=model, device="cpu").pixels


def check_one(data: bytes, expected: np.ndarray, decode: Callable[[bytes], np.ndarray] | None = None) -> dict[str, Any]:
    """Decode ``data`` (default: on the CPU model of this process) and compare with ``expected``."""
    decode = decode or _decode_cpu
    start = time.perf_counter()
    try:
        problem = mismatch(expected, decode(data))
    except Exception as exc:  # a corrupt stream, a hash mismatch: whatever stops a decode is a failed check
        problem = f"decoder failed: {type(exc).__name__}: {exc}"
    return {"exact": problem is None, "error": problem, "cpu_decode_s": time.perf_counter() - start}


def _check_task(task: tuple[bytes, np.ndarray]) -> dict[str, Any]:
    return check_one(*task)


def check_all(coded: list[Coded], codec_name: str, model_path: str | None, workers: int) -> list[dict[str, Any]]:
    """Every file decoded on the CPU (one thread per decode) and compared: in this process when
    ``workers`` is 1, else in a pool of fresh (spawned) processes."""
    tasks = [(c.data, c.expected) for c in coded]
    if workers <= 1:
        _load_cpu_model(codec_name, model_path)
        results = [_check_task(t) for t in tasks]
    else:
        ctx = get_context("spawn")
        with ProcessPoolExecutor(workers, ctx, initializer=_load_cpu_model, initargs=(codec_name, model_path)) as pool:
            results = list(pool.map(_check_task, tasks))
    return [file_row(c, r) for c, r in zip(coded, results, strict=True)]


def file_row(c: Coded, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "photo": c.photo,
        "steps": c.steps,
        "bytes": len(c.data),
        "adapters": c.adapters,
        "encode_s": round(c.encode_s, 4),
        **result,
    }


# ------------------------------------------------------------------------------------ encoding


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def adapt_config(steps: int, patches: int) -> AdaptConfig | None:
    return None if steps == 0 else AdaptConfig(steps=steps, max_patches=patches, min_pixels=0)


def encode_lossless(
    photos: list[tuple[str, np.ndarray]], model: codec.api.Model, device: str, steps: int, patches: int
) -> list[Coded]:
    """Each photo's learned file at T = ``steps``, plus a ``forced`` adapter file where its adapters were dropped."""
    cfg = adapt_config(steps, patches)
    out = []
    for name, px in photos:
        seconds, [(data, report)] = timed(
            lambda px=px: codec.api.encode_many([px], model=model, device=device, adapt=cfg, coder="learned"), device
        )
        out.append(Coded(name, steps, data, px, report.adapters, seconds))
        if steps and report.adapters != "kept":
            forced = forced_adapter_file(px, model, device, cfg)
            if forced is not None:
                out.append(Coded(name, f"{steps} forced", forced, px, "forced"))
    return out


def forced_adapter_file(px: np.ndarray, model: codec.api.Model, device: str, cfg: AdaptConfig) -> bytes | None:
    """A learned file carrying the photo's adapters even though they do not pay (bench only: the
    codec never writes one), so the merged-adapter exact path is checked on every photo. None
    where merging them would overflow the exact accumulator (the codec then codes without)."""
    [adapted] = rpft.adapt(model.float_model(device), [px], cfg)
    net = model.exact
    try:
        merged = with_adapters(net, adapted.adapters)
    except ValueError:
        return None
    section = adapters.encode_section(net.cfg, adapted.adapters, net.luts["sigmoid"])
    raster = codec.Raster.from_array(px)
    report = EncodeReport()
    per = patches_per_stream(model.exact.cfg.patch)
    learned = LearnedFile.code(raster, model, per, 1, report, DEFAULT_CALIBRATION)
    return learned._file(merged, section, report)


def encode_lossy(photos: list[tuple[str, np.ndarray]], model: Any, device: str) -> list[Coded]:
    from codec.cca.api import encode_lossy_with_reconstruction

    out = []
    for name, px in photos:
        seconds, (data, recon) = timed(
            lambda px=px: encode_lossy_with_reconstruction(px, model=model, device=device), device
        )
        out.append(Coded(name, "lossy", data, recon, "none", seconds))
    return out


def device_decodes(coded: list[Coded], decode: Callable[[bytes], np.ndarray], device: str) -> list[tuple[float, bool]]:
    """(seconds, exact) of decoding each file on the encoding device."""
    out = []
    for c in coded:
        seconds, pixels = timed(lambda c=c: decode(c.data), device)
        out.append((seconds, mismatch(c.expected, pixels) is None))
    return out


# ------------------------------------------------------------------------------------ the run


def median_row(name: str, values: list[float], note: str = "") -> dict[str, Any]:
    return {"name": name, "median_s": statistics.median(values), "n": len(values), "note": note}


def adaptation_rows(
    photos: list[np.ndarray], model: codec.api.Model, device: str, steps: int, patches: int, batches: list[int]
) -> list[dict[str, Any]]:
    """Images per second of ``rpft.adapt`` on batches of photos (cycled to fill a batch)."""
    cfg = AdaptConfig(steps=steps, max_patches=patches, min_pixels=0)
    net = model.float_model(device)
    rpft.adapt(net, photos[:1], cfg)  # warm-up: kernels, autotuning, allocator
    rows = []
    for b in batches:
        batch = [photos[i % len(photos)] for i in range(b)]
        seconds, _ = timed(lambda batch=batch: rpft.adapt(net, batch, cfg), device)
        rows.append(
            {"batch": b, "steps": steps, "seconds": seconds, "images_per_s": b / seconds, "cycled": b > len(photos)}
        )
    return rows


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def label(codec_name: str, steps: str) -> str:
    return f"T={steps}" if codec_name == "callic" else steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Parts 1-3, exactness first: a run cut short by ``--max-seconds`` skips the timings that
    remain (named in ``skipped``), never the check."""
    out = Path(args.out)
    deadline = time.monotonic() + args.max_seconds
    photos = load_photos(Path(args.photos))
    steps = [int(s) for s in args.steps.split(",")] if args.codec == "callic" else []
    report: dict[str, Any] = {
        "codec": args.codec,
        "encode_device": args.device,
        "model": args.model,
        "environment": environment(args.device),
        "photos": [n for n, _ in photos],
        "files": [],
        "timings": [],
        "adaptation": [],
        "skipped": [],
    }

    def save() -> None:
        out.write_text(json.dumps(report, indent=1, default=str) + "\n")

    save()
    coded, decode_on_device = encode_photos(args, photos, steps)
    real = [c for c in coded if c.adapters != "forced"]
    keys = list(dict.fromkeys(str(c.steps) for c in real))
    for key in keys:
        seconds = [c.encode_s for c in real if str(c.steps) == key]
        report["timings"].append(median_row(f"encode {label(args.codec, key)} ({args.device})", seconds))
    save()
    report["files"] = check_all(coded, args.codec, args.model, args.cpu_workers)
    report["exact_all"] = all(f["exact"] for f in report["files"])
    note = f"1 thread per decode, {max(1, args.cpu_workers)} at once"
    for key in keys:
        seconds = [f["cpu_decode_s"] for f in report["files"] if str(f["steps"]) == key]
        report["timings"].append(median_row(f"decode {label(args.codec, key)} (cpu check)", seconds, note))
    save()
    if time.monotonic() < deadline:
        decodes = device_decodes(real, decode_on_device, args.device)
        exact_there = {(c.photo, str(c.steps)): ok for c, (_, ok) in zip(real, decodes, strict=True)}
        for f in report["files"]:
            f["device_decode_exact"] = exact_there.get((f["photo"], str(f["steps"])))
        for key in keys:
            sel = [s for c, (s, _) in zip(real, decodes, strict=True) if str(c.steps) == key]
            report["timings"].append(median_row(f"decode {label(args.codec, key)} ({args.device})", sel))
    else:
        report["skipped"].append("device decode timing")
    save()
    if args.codec == "callic" and args.batches:
        if time.monotonic() < deadline:
            model = codec.load_model(args.model, args.device)
            batches = [int(b) for b in args.batches.split(",")]
            pixels = [px for _, px in photos]
            cfg = (args.adapt_steps, args.adapt_patches, batches)
            report["adaptation"] = adaptation_rows(pixels, model, args.device, *cfg)
        else:
            report["skipped"].append("adaptation timing")
    if args.device.startswith("cuda"):
        report["environment"]["max_gpu_memory_mib"] = torch.cuda.max_memory_allocated() // (1 << 20)
    save()
    return report


def encode_photos(
    args: argparse.Namespace, photos: list[tuple[str, np.ndarray]], steps: list[int]
) -> tuple[list[Coded], Callable[[bytes], np.ndarray]]:
    """Every file of part 1, after one untimed warm-up encode per T, and a decoder on the device."""
    if args.codec == "cca":
        from codec.cca.api import load_lossy_model

        model = load_lossy_model(args.model, device=args.device)
        encode_lossy(photos[:1], model, args.device)  # warm-up
        return encode_lossy(photos, model, args.device), (
            lambda data: codec.decode(data, model=model, device=args.device).pixels
        )
    model = codec.load_model(args.model, args.device)
    coded: list[Coded] = []
    for t in steps:
        encode_lossless(photos[:1], model, args.device, t, args.adapt_patches)  # warm-up
        coded += encode_lossless(photos, model, args.device, t, args.adapt_patches)
    return coded, (lambda data: codec.decode(data, model=model, device=args.device).pixels)


def load_photos(folder: Path) -> list[tuple[str, np.ndarray]]:
    photos = []
    for path in sorted(folder.glob("*.png")):
        raster = read_image(path)
        if raster.pixels.dtype == np.uint8 and raster.mode in ("RGB", "RGBA"):
            photos.append((path.stem, np.ascontiguousarray(raster.pixels[..., :3])))
    if not photos:
        raise CallicError(f"no 8-bit RGB PNG photos in {folder}")
    return photos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", help="folder of 8-bit RGB PNG photos (e.g. .gpu/photos)")
    ap.add_argument("--out", required=True, help="JSON report")
    ap.add_argument("--codec", choices=["callic", "cca"], default="callic")
    ap.add_argument("--model", help="model file (default: the shipped model; cca: the highest shipped quality)")
    ap.add_argument("--device", default="cuda", help="where to encode (and time decoding): cuda or cpu")
    ap.add_argument("--steps", default="0,10", help="adaptation steps T to encode at (lossless)")
    ap.add_argument("--adapt-patches", type=int, default=32, help="most patches per step per image")
    ap.add_argument("--batches", default="1,4,16", help="batch sizes of the adaptation timing ('' to skip)")
    ap.add_argument("--adapt-steps", type=int, default=10)
    ap.add_argument("--cpu-workers", type=int, default=min(16, os.cpu_count() or 1), help="parallel CPU decodes")
    ap.add_argument("--threads", type=int, help="torch CPU threads of this process (the encoder's range coder)")
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=float("inf"),
        help="after this, skip the timings not yet begun (the exactness check always runs)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args)
    except Exception as exc:  # any failure but a mismatch is exit 2, with its traceback in the log
        traceback.print_exc()
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    bad = [f for f in report["files"] if not f["exact"]]
    for f in bad:
        print(f"NOT EXACT: {f['photo']} T={f['steps']}: {f['error']}", file=sys.stderr)
    print(
        f"exactness: {len(report['files']) - len(bad)} of {len(report['files'])} files exact "
        f"({args.device} encode -> cpu decode)"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
