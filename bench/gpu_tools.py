"""The CPU-side helpers of ``bench/gpu_session.sh``: pack what a device call carries, make tiny
models for ``--dry-run``, turn checkpoints into what fits the trip, and write the summary.

A device call carries the working tree plus at most 8 ignored paths, 64 MiB in all, and brings
back at most 8 files of at most 16 MiB each (64 MiB together) from ``$OUT``, no more than two
folders down (``/work/.library/device/README.md``). Everything here exists to fit those limits:

- ``pack``: training crops (PNG, non-overlapping tiles, chosen so that ``callic train`` draws the
  same mix of source groups from them as from the full set: ``group_crops``), the validation
  images as they are (with their manifest.json, which names their groups), a few photo crops for
  the exactness check, and optionally a campaign checkpoint (with its ``log.csv``) to resume, in
  the byte budget a device call leaves. ``pack.json`` says what went in, with both crop mixes.
- ``pack --tiny-models DIR``: also a random tiny MGCF and a tiny CCA model file (``--dry-run`` codes with them).
- ``init-model``: a model file with a checkpoint's configuration and weights, so that ``callic
  train --init`` builds the same configuration the checkpoint holds and the checkpoint resumes on it.
- ``strip-checkpoint``: a lossy run's checkpoint (model, auxiliary model and Adam: ~85 MB for the
  ``small`` configuration, more than one returned file may be) cut to its weights in float16
  (~14 MB), which ``callic train --codec cca --init FILE.pt`` starts from (Adam state is lost).
- ``summary``: ``summary.json`` and ``summary.md`` from the stages' exit codes, the check's JSON,
  the training log and the files under ``$OUT``, with a warning for anything over the return limits.
- ``travel``: the bytes a device call would carry (tracked and untracked-not-ignored files plus
  the carried paths), against the 64 MiB limit.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

MIB = 1 << 20
TRAVEL_LIMIT = 64 * MIB  # the working tree and the carried paths, together
RETURN_FILES, RETURN_FILE_BYTES, RETURN_TOTAL = 8, 16 * MIB, 64 * MIB
RETURN_DEPTH = 2  # $OUT/a/b/file comes back, $OUT/a/b/c/file does not
CHECKPOINT_KEYS = ("model", "step", "config")


# ------------------------------------------------------------------------------------------- pack


def rgb_images(folder: Path) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 array) of every 8-bit RGB(A) image under ``folder``, sorted by name; the
    rest (gray, 16-bit, palette...) is what ``callic train`` skips too."""
    from codec.images import read_image
    from jobs.imagefiles import IMAGE_SUFFIXES

    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        raster = read_image(path)
        if raster.pixels.dtype == np.uint8 and raster.mode in ("RGB", "RGBA"):
            out.append((path.stem, np.ascontiguousarray(raster.pixels[..., :3])))
    return out


def tile_order(name: str, shape: tuple[int, ...], size: int, seed: int) -> list[tuple[int, int]]:
    """The non-overlapping ``size`` tiles of an image, in an order shuffled by (name, seed)."""
    tiles = [(y, x) for y in range(0, shape[0] - size + 1, size) for x in range(0, shape[1] - size + 1, size)]
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return [tiles[i] for i in rng.permutation(len(tiles))]


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def round_robin_crops(
    images: list[tuple[str, np.ndarray]], size: int, seed: int, count: int
) -> list[tuple[str, bytes]]:
    """``count`` PNG crops of ``size``: tile r of every image before tile r + 1 of any (the photos
    of the exactness check: as many different images as there are)."""
    orders = {name: tile_order(name, px.shape, size, seed) for name, px in images}
    crops: list[tuple[str, bytes]] = []
    for r in range(max((len(o) for o in orders.values()), default=0)):
        for name, px in images:
            if r < len(orders[name]) and len(crops) < count:
                crops.append((f"{name}-{r:03d}.png", png_bytes(whole_or_tile(px, orders[name][r], size))))
    return crops


def write_files(folder: Path, files: list[tuple[str, bytes]]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files:
        (folder / name).write_bytes(data)
    return sum(len(d) for _, d in files)


def load_checkpoint(path: Path) -> dict:
    """A ``callic train`` checkpoint, loaded without pickle; a ``CallicError`` naming the file if it is not one."""
    import torch

    from codec.errors import CallicError

    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise CallicError(f"{path}: not a callic train checkpoint ({exc})") from exc
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        raise CallicError(f"{path}: not a callic train checkpoint (needs {', '.join(CHECKPOINT_KEYS)})")
    return state


def pack(args: argparse.Namespace) -> dict[str, Any]:
    """Fill ``args.dest`` (emptied first) with val/, photos/, an optional checkpoint, then train/
    with what the byte budget leaves, and pack.json."""
    dest = Path(args.dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    photos = round_robin_crops(
        [(n, px) for n, px in rgb_images(Path(args.photos)) if min(px.shape[:2]) >= args.photo_crop],
        args.photo_crop,
        args.seed,
        count=args.photo_count,
    )
    if len(photos) < args.photo_count:
        asked = f"{args.photo_crop} (asked {args.photo_count})"
        print(f"warning: only {len(photos)} photo crops of {asked}", file=sys.stderr)
    # The validation images as they are, and their manifest.json: validation reports per group.
    val = [
        (p.name, p.read_bytes())
        for p in sorted(Path(args.val).iterdir())
        if p.suffix.lower() == ".png" or p.name == "manifest.json"
    ]
    info: dict[str, Any] = {
        "val": {"from": str(args.val), "files": len(val), "bytes": write_files(dest / "val", val)},
        "photos": {
            "from": str(args.photos),
            "crop": args.photo_crop,
            "files": len(photos),
            "bytes": write_files(dest / "photos", photos),
        },
        "seed": args.seed,
    }
    if args.checkpoint:
        info["checkpoint"] = pack_checkpoint(Path(args.checkpoint), dest)
    wheels = sorted(Path(args.wheels).glob("*.whl")) if args.wheels else []
    if wheels:
        info["wheels"] = [p.name for p in wheels]
    budget = train_budget(args.train_mib, Path(args.repo), folder_bytes(dest) + sum(p.stat().st_size for p in wheels))
    info["train"] = train_crops(dest / "train", Path(args.data), args.crop, args.min_side, budget, args.seed)
    info["bytes"] = folder_bytes(dest) + sum(p.stat().st_size for p in wheels)
    (dest / "pack.json").write_text(json.dumps(info, indent=1) + "\n")
    if args.tiny_models:
        info["tiny_models"] = tiny_models(args.tiny_models)
    return info


def pack_checkpoint(ckpt: Path, dest: Path) -> dict[str, Any]:
    """The checkpoint (and the ``log.csv`` beside it) into the pack; one over 16 MiB (a lossy run's,
    ~85 MB with Adam state: it could not travel) goes as its float16 weights, an ``--init``."""
    state = load_checkpoint(ckpt)
    out = {"from": str(ckpt), "step": int(state["step"]), "bytes": ckpt.stat().st_size, "stripped": False}
    if out["bytes"] > RETURN_FILE_BYTES:
        out["stripped"] = True
        out["bytes"] = strip_checkpoint(ckpt, dest / "checkpoint.pt")["bytes"]
    else:
        shutil.copyfile(ckpt, dest / "checkpoint.pt")
    if (ckpt.parent / "log.csv").is_file():
        shutil.copyfile(ckpt.parent / "log.csv", dest / "log.csv")
    return out


def train_budget(train_mib: str, repo: Path, other_bytes: int) -> int:
    """Bytes for the training crops: ``train_mib`` MiB, or with ``auto`` what the 64 MiB a call
    carries leaves after the working tree and the rest of the pack (less 1 MiB of margin; at
    least 2 MiB, so that a tree already too large still gets a usable pack, and a warning)."""
    if train_mib != "auto":
        return int(float(train_mib) * MIB)
    left = TRAVEL_LIMIT - travel_bytes(repo, [])["tree"] - other_bytes - MIB
    if left < 2 * MIB:
        print(
            f"warning: the working tree and the rest of the pack leave {left / MIB:.1f} MiB of the 64 MiB; "
            "packing 2 MiB of training crops",
            file=sys.stderr,
        )
    return max(left, 2 * MIB)


def image_groups(folder: Path, names: list[str]) -> dict[str, str]:
    """Each image's source group, as ``callic train`` reads it (``jobs.trainsets``: the folder's
    manifest.json, else the file name's part before the first ``-``)."""
    import fsspec

    from jobs.trainsets import group_from_name, recorded_groups

    recorded = recorded_groups(fsspec.filesystem("file"), str(folder))
    return {n: recorded.get(n) or group_from_name(n) for n in names}


def group_crops(
    images: list[tuple[str, str, np.ndarray]], size: int, min_side: int, seed: int, max_bytes: int
) -> list[tuple[str, str, bytes]]:
    """(file, group, PNG) crops of (name, group, pixels) images within ``max_bytes``, keeping
    ``callic train``'s crop mix: it draws a group by the square root of its pixels, then an image
    of it uniformly. So each next crop goes to the group whose packed pixels are the smallest
    share of its source pixels (packed pixels stay proportional to source pixels, and so do their
    square roots), and within a group to its images in turn. An image smaller than ``size`` but at
    least ``min_side`` on each side is one crop, whole. The first crop that does not fit ends it."""
    usable = [(n, g, px) for n, g, px in images if min(px.shape[:2]) >= min_side]
    source_px = {g: 0 for _, g, _ in usable}
    queues: dict[str, list[tuple[str, np.ndarray]]] = {g: [] for g in source_px}
    for g in source_px:
        members = [(n, px) for n, gg, px in usable if gg == g]
        source_px[g] = sum(px.shape[0] * px.shape[1] for _, px in members)
        regions = {n: tile_order(n, px.shape, size, seed) if min(px.shape[:2]) >= size else [None] for n, px in members}
        for r in range(max(len(v) for v in regions.values())):
            for n, px in members:
                if r < len(regions[n]):
                    queues[g].append((f"{n}-{r:03d}.png", whole_or_tile(px, regions[n][r], size)))
    packed = {g: 0 for g in source_px}
    out: list[tuple[str, str, bytes]] = []
    used = 0
    while any(queues.values()):
        g = min((g for g in queues if queues[g]), key=lambda g: (packed[g] / source_px[g], g))
        name, px = queues[g].pop(0)
        data = png_bytes(px)
        if used + len(data) > max_bytes:
            break
        out.append((name, g, data))
        packed[g] += px.shape[0] * px.shape[1]
        used += len(data)
    return out


def png_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR, which ``png_bytes`` writes first."""
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def whole_or_tile(px: np.ndarray, region: tuple[int, int] | None, size: int) -> np.ndarray:
    if region is None:
        return px
    y, x = region
    return np.ascontiguousarray(px[y : y + size, x : x + size])


def sqrt_mix(pixels: dict[str, int]) -> dict[str, float]:
    """``callic train``'s share of crops per group for these pixel counts, rounded for the report."""
    from jobs.trainsets import mix_of_pixels

    return {g: round(share, 4) for g, share in sorted(mix_of_pixels({g: p for g, p in pixels.items() if p}).items())}


def train_crops(folder: Path, data: Path, crop: int, min_side: int, budget: int, seed: int) -> dict[str, Any]:
    """The training crops (``group_crops``) in ``folder``, with a manifest.json naming each one's
    group, and the crop mix they give against the mix of the source images."""
    sources = rgb_images(data)
    groups = image_groups(data, [f"{n}.png" for n, _ in sources])
    images = [(n, groups[f"{n}.png"], px) for n, px in sources]
    crops = group_crops(images, crop, min_side, seed, budget)
    used = write_files(folder, [(name, d) for name, _, d in crops])
    manifest = {"name": "gpu-pack", "images": [{"file": name, "group": g} for name, g, _ in crops]}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    source_px: dict[str, int] = {}
    for _, g, px in images:
        if min(px.shape[:2]) >= min_side:
            source_px[g] = source_px.get(g, 0) + px.shape[0] * px.shape[1]
    packed_px = {g: 0 for g in source_px}
    for _, g, d in crops:
        h, w = png_size(d)
        packed_px[g] += h * w
    return {
        "from": str(data),
        "crop": crop,
        "files": len(crops),
        "bytes": used,
        "budget": budget,
        "crops_per_group": {g: sum(1 for _, gg, _ in crops if gg == g) for g in sorted(source_px)},
        "mix_source": sqrt_mix(source_px),
        "mix_pack": sqrt_mix(packed_px),
        "skipped_small": [n for n, _, px in images if min(px.shape[:2]) < min_side],
    }


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def travel_bytes(repo: Path, carried: list[str]) -> dict[str, int]:
    """What a device call would send: git's tracked and untracked-not-ignored files, plus the carried paths."""
    names = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    tree = sum((repo / n.decode()).stat().st_size for n in names if n and (repo / n.decode()).is_file())
    carry = {c: folder_bytes(repo / c) for c in carried if (repo / c).exists()}
    return {"tree": tree, **{f"carry:{k}": v for k, v in carry.items()}, "total": tree + sum(carry.values())}


# ------------------------------------------------------------------------------------- models


def tiny_models(dest: str) -> dict[str, str]:
    """A seeded random tiny MGCF (weights scaled down, as the tests' fixture does, so that its
    predictions are sharp enough for the exact path's tables) and a tiny CCA model."""
    import torch

    from codec.cca.config import CCAConfig
    from codec.cca.model import CCAModel
    from codec.cca.weights import save_model as save_lossy
    from codec.mgcf.config import MGCFConfig
    from codec.mgcf.model import MGCF
    from codec.mgcf.weights import save_model

    torch.manual_seed(0)
    mgcf = MGCF(MGCFConfig.tiny())
    with torch.no_grad():
        for p in mgcf.parameters():
            p.mul_(0.5)
    torch.manual_seed(0)
    paths = {
        "callic": str(save_model(mgcf.eval(), dest)),
        "cca": str(save_lossy(CCAModel(CCAConfig.tiny()).eval(), 1.0, dest)),
    }
    Path(dest, "models.json").write_text(json.dumps(paths) + "\n")
    return paths


def init_model(args: argparse.Namespace) -> tuple[int, str]:
    """The checkpoint's step, and an MGCF model file of its configuration and weights (``callic train --init``)."""
    from codec.mgcf.config import MGCFConfig
    from codec.mgcf.model import MGCF
    from codec.mgcf.weights import save_model

    state = load_checkpoint(Path(args.checkpoint))
    model = MGCF(MGCFConfig.from_json(state["config"]))
    model.load_state_dict(state["model"])
    return int(state["step"]), str(save_model(model.eval(), args.dest))


def strip_checkpoint(src: Path, dst: Path) -> dict[str, Any]:
    """``src``'s weights (model and auxiliary model) in float16, with its step and configuration:
    what ``callic train --codec cca --init DST`` starts from, small enough to come back."""
    import torch

    state = load_checkpoint(src)
    weights = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    small = {
        "model": weights,
        "step": state["step"],
        "elapsed_s": state.get("elapsed_s", 0.0),
        "config": state["config"],
    }
    buf = io.BytesIO()
    torch.save(small, buf)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(buf.getvalue())
    return {"from_bytes": src.stat().st_size, "bytes": dst.stat().st_size, "step": int(state["step"])}


# ------------------------------------------------------------------------------------ summary


def return_problems(out: Path) -> list[str]:
    """Why some of ``out``'s files would not come back from a device call (empty: all of them would)."""
    files = [p for p in sorted(out.rglob("*")) if p.is_file()]
    problems = []
    if len(files) > RETURN_FILES:
        problems.append(f"{len(files)} files under $OUT, at most {RETURN_FILES} come back")
    if sum(p.stat().st_size for p in files) > RETURN_TOTAL:
        problems.append(f"more than {RETURN_TOTAL // MIB} MiB under $OUT together")
    for p in files:
        rel = p.relative_to(out)
        if p.stat().st_size > RETURN_FILE_BYTES:
            problems.append(f"{rel}: {p.stat().st_size} bytes, over {RETURN_FILE_BYTES // MIB} MiB")
        if len(rel.parts) - 1 > RETURN_DEPTH:
            problems.append(f"{rel}: more than {RETURN_DEPTH} folders down")
    return problems


def read_stages(path: Path) -> list[dict[str, Any]]:
    """``name<TAB>exit code<TAB>seconds<TAB>note`` lines, as the session script appends them."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        name, rc, seconds, *note = line.split("\t")
        rows.append({"stage": name, "rc": int(rc), "seconds": int(seconds), "note": note[0] if note else ""})
    return rows


def training_facts(log: Path, start_step: int | None) -> dict[str, Any]:
    """Rows, steps and the last validation of a ``log.csv``; ``start_step``: where this session began."""
    if not log.is_file():
        return {"rows": 0}
    rows = list(csv.DictReader(io.StringIO(log.read_text())))
    if not rows:
        return {"rows": 0}
    first = start_step if start_step is not None else int(rows[0]["step"])
    mine = [r for r in rows if int(r["step"]) >= first]
    val_keys = [k for k in rows[-1] if k.startswith("val_")]
    facts: dict[str, Any] = {
        "rows": len(rows),
        "session_rows": len(mine),
        "start_step": first,
        "end_step": int(rows[-1]["step"]),
        "device": rows[-1].get("device", ""),
    }
    facts["last"] = {k: rows[-1][k] for k in ("step", "elapsed_s", "lr", *val_keys) if k in rows[-1]}
    if len(mine) >= 2:
        seconds = float(mine[-1]["elapsed_s"]) - float(mine[0]["elapsed_s"])
        steps = int(mine[-1]["step"]) - int(mine[0]["step"])
        facts["steps_per_s"] = round(steps / seconds, 3) if seconds > 0 else None
    return facts


def read_json(path: str | None) -> Any:
    """A stage's JSON, or None where the stage did not get to write it."""
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None


def summary(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    check = read_json(args.check)
    start = None
    if args.start_step not in (None, ""):
        start = int(args.start_step)
    info: dict[str, Any] = {
        "mode": "dry-run" if args.dry_run else "device",
        "codec": args.codec,
        "stages": read_stages(Path(args.stages)),
        "environment": read_json(args.env) or {},
        "check": check,
        "training": training_facts(Path(args.train_log), start) if args.train_log else {"rows": 0},
        "pack": read_json(args.pack_json) or {},
    }
    info["ok"] = bool(info["stages"]) and all(s["rc"] == 0 for s in info["stages"])
    # The two summary files count against the return limits too: write them, then look.
    for _ in range(2):
        (out / "summary.json").write_text(json.dumps(info, indent=1) + "\n")
        (out / "summary.md").write_text(markdown(info))
        info["return_problems"] = return_problems(out)
        info["returned"] = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return info


def markdown(info: dict[str, Any]) -> str:
    """The summary as the tables a reader wants first: stages, exactness, timings, adaptation, training."""
    env = info.get("environment", {})
    lines = [f"# GPU session ({info['mode']}, codec {info['codec']}): {'ok' if info['ok'] else 'FAILED'}", ""]
    if env:
        lines += [", ".join(f"{k} {v}" for k, v in env.items()), ""]
    lines += ["| stage | exit | seconds | note |", "|---|--:|--:|---|"]
    lines += [f"| {s['stage']} | {s['rc']} | {s['seconds']} | {s['note']} |" for s in info["stages"]]
    check = info.get("check") or {}
    files = check.get("files", [])
    if files:
        exact = sum(1 for f in files if f.get("exact"))
        lines += [
            "",
            f"**Exactness** ({check.get('encode_device')} encode -> cpu decode): {exact} of {len(files)} "
            "files decode to the same pixels (values, dtype, shape)",
            "",
            "| photo | T | bytes | adapters | exact | error |",
            "|---|--:|--:|---|---|---|",
        ]
        lines += [
            f"| {f['photo']} | {f.get('steps', '')} | {f.get('bytes', '')} | {f.get('adapters', '')} | "
            f"{'yes' if f.get('exact') else 'NO'} | {f.get('error') or ''} |"
            for f in files
        ]
    if check.get("timings"):
        lines += ["", "| timing | median s | n | note |", "|---|--:|--:|---|"]
        lines += [f"| {t['name']} | {t['median_s']:.4f} | {t['n']} | {t.get('note', '')} |" for t in check["timings"]]
    if check.get("adaptation"):
        lines += ["", "| adaptation batch | steps | seconds | images/s |", "|--:|--:|--:|--:|"]
        lines += [
            f"| {a['batch']} | {a['steps']} | {a['seconds']:.3f} | {a['images_per_s']:.3f} |"
            for a in check["adaptation"]
        ]
    t = info.get("training", {})
    if t.get("rows"):
        lines += [
            "",
            f"**Training**: steps {t['start_step']} -> {t['end_step']} on {t.get('device', '')}, "
            f"{t.get('steps_per_s', '?')} steps/s, last row {t.get('last')}",
        ]
    for p in info.get("return_problems", []):
        lines.append(f"\nWARNING (would not come back): {p}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="crops, val, photos, checkpoint into DEST")
    p.add_argument("dest")
    p.add_argument("--data", required=True, help="training images (e.g. ~/.cache/callic/data/train)")
    p.add_argument("--val", required=True, help="validation images (PNG files are copied as they are)")
    p.add_argument("--photos", required=True, help="photos for the exactness check (e.g. .../pkg13)")
    p.add_argument("--crop", type=int, default=256, help="training crop side (>= the training crop)")
    p.add_argument(
        "--train-mib", default="auto", help="MiB of training crops, or auto: what the 64 MiB of a device call leaves"
    )
    p.add_argument("--min-side", type=int, default=128, help="smaller images go in whole if at least this")
    p.add_argument("--repo", default=".", help="the checkout whose working tree travels too (for auto)")
    p.add_argument("--photo-crop", type=int, default=256)
    p.add_argument("--photo-count", type=int, default=10)
    p.add_argument("--checkpoint", help="a campaign checkpoint.pt to resume on the device (its log.csv goes too)")
    p.add_argument("--wheels", help="wheel folder, listed in pack.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny-models", help="also write a random tiny MGCF and CCA model file here (--dry-run)")
    p = sub.add_parser("init-model", help="print a checkpoint's step and an MGCF model file made from it in DEST")
    p.add_argument("checkpoint")
    p.add_argument("dest")
    p = sub.add_parser("strip-checkpoint", help="a checkpoint's weights in float16 (an --init for cca)")
    p.add_argument("src")
    p.add_argument("dst")
    p = sub.add_parser("travel", help="bytes a device call would carry, against 64 MiB")
    p.add_argument("--repo", default=".")
    p.add_argument("carry", nargs="*")
    p = sub.add_parser("summary", help="summary.json and summary.md into OUT")
    p.add_argument("--out", required=True)
    p.add_argument("--codec", default="callic")
    p.add_argument("--stages", required=True)
    p.add_argument("--check")
    p.add_argument("--env")
    p.add_argument("--train-log")
    p.add_argument("--start-step")
    p.add_argument("--pack-json")
    p.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        print(json.dumps(pack(args), indent=1))
    elif args.cmd == "init-model":
        print(*init_model(args))
    elif args.cmd == "strip-checkpoint":
        print(json.dumps(strip_checkpoint(Path(args.src), Path(args.dst))))
    elif args.cmd == "travel":
        sizes = travel_bytes(Path(args.repo), args.carry)
        for k, v in sizes.items():
            print(f"{k}\t{v}\t{v / MIB:.1f} MiB")
        if sizes["total"] > TRAVEL_LIMIT:
            total = sizes["total"] / MIB
            print(f"TOO LARGE: {total:.1f} MiB would travel, a device call takes 64 MiB", file=sys.stderr)
            return 3
    elif args.cmd == "summary":
        info = summary(args)
        sys.stdout.write(markdown(info))
        return 0 if info["ok"] else 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
