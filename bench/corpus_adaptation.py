"""Issue 19's measurement of corpus adaptation: one corpus archived twice with ``callic archive``
(the base model, then ``--adapt-corpus``) and JPEG-XL lossless coded on every image, all in one
run, so that the three totals are compared on the same machine and the same day.

    OMP_NUM_THREADS=1 python -m bench.corpus_adaptation SRC WORK [--jxl-effort 9] [archive flags...]
    python -m bench.corpus_adaptation --build-lomiri DIR [--crop 384] [--count 24]

Prints, and writes to WORK/corpus-adaptation.json: per job the stored bytes (the corpus model's
bytes counted in, once), bpsp, wall seconds and the codecs kept; JPEG-XL's total; the ratios.
The adaptation's own seconds come from the job's ``corpus`` facts; the wall-clock difference
between the two jobs is the encode time it added. Other flags go to both archive commands, the
``--corpus-*`` flags to the second only.

``--build-lomiri`` makes the homogeneous corpus measured for issue 19: crops of the 15
photographs of lomiri-wallpapers-16.04 and -20.04 (the ones ``callic data`` uses: 12 + 1 in
``train``, 2 in ``val``), decoded at full resolution. Training saw 13 of them only 4x
area-downscaled and never these pixels; the crops are aligned to the JPEG's 8x8 blocks and spread
over each photo on a regular grid, the photos taken in turn until there are ``count`` crops.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from codec import fallback
from codec.images import read_image
from jobs import datasets
from jobs.sources import download, read_members

CALLIC = str(Path(sys.executable).with_name("callic"))  # the command of this interpreter's install
LOMIRI_SETS = (
    (datasets.LOMIRI_1604, datasets.LOMIRI_1604_PHOTOS + datasets.LOMIRI_1604_VAL),
    (datasets.LOMIRI_2004, datasets.LOMIRI_2004_PHOTOS),
)


def build_lomiri(out: Path, crop: int, count: int, cache: Path) -> list[Path]:
    """``count`` crop x crop PNGs of the lomiri photographs into ``out``."""
    photos: list[tuple[str, np.ndarray]] = []
    for archive, names in LOMIRI_SETS:
        members = [f"usr/share/backgrounds/{n}.jpg" for n in names]
        data = read_members(download(archive, cache), members)
        photos += [(n, datasets.decode_rgb8(data[m], m)) for n, m in zip(names, members, strict=True)]
    per_photo = -(-count // len(photos))
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for j in range(per_photo):
        for name, px in photos:
            if len(written) == count:
                return written
            h, w = px.shape[:2]
            # crop j of per_photo along the photo's longer side, centred on the other one
            along, across = (w, h) if w >= h else (h, w)
            a = (along - crop) * (j + 1) // (per_photo + 1) // 8 * 8
            b = (across - crop) // 2 // 8 * 8
            y, x = (b, a) if w >= h else (a, b)
            path = out / f"lomiri-{name}-{j}.png"
            Image.fromarray(np.ascontiguousarray(px[y : y + crop, x : x + crop])).save(path)
            written.append(path)
    return written


def _archive(src: Path, work: Path, job: str, flags: list[str]) -> dict:
    cmd = [CALLIC, "archive", str(src), str(work), "--job-id", job, "--workers", "1", *flags]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    status = subprocess.run([CALLIC, "status", str(work / job), "--json"], check=True, capture_output=True, text=True)
    facts = json.loads(status.stdout)
    spec = json.loads((work / job / "job.json").read_text())
    total = facts["stored_bytes"] + facts["corpus_model_bytes"]
    return {
        "command": " ".join(cmd),
        "wall_s": round(wall, 1),
        "ok": facts["ok"],
        "stored_bytes": facts["stored_bytes"],
        "corpus_model_bytes": facts["corpus_model_bytes"],
        "total_bytes": total,
        "codecs": facts["codecs"],
        "corpus": spec.get("corpus"),
    }


def _jxl(src: Path, effort: int) -> dict:
    total, subpixels, seconds = 0, 0, 0.0
    for path in sorted(p for p in src.iterdir() if p.suffix == ".png"):
        px = read_image(path.read_bytes(), name=str(path)).pixels
        start = time.perf_counter()
        total += len(fallback.jxl_encode(px, effort))
        seconds += time.perf_counter() - start
        subpixels += px.size
    return {"effort": effort, "total_bytes": total, "subpixels": subpixels, "encode_s": round(seconds, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, nargs="?")
    p.add_argument("work", type=Path, nargs="?")
    p.add_argument("--jxl-effort", type=int, default=9)
    p.add_argument("--build-lomiri", type=Path, metavar="DIR")
    p.add_argument("--crop", type=int, default=384)
    p.add_argument("--count", type=int, default=24)
    for flag in ("--corpus-sample", "--corpus-steps", "--corpus-minutes"):
        p.add_argument(flag)
    args, shared = p.parse_known_args()
    if args.build_lomiri:
        paths = build_lomiri(args.build_lomiri, args.crop, args.count, datasets.default_root() / "downloads")
        print(f"{len(paths)} crops in {args.build_lomiri}")
        return 0
    if args.src is None or args.work is None:
        p.error("SRC and WORK are needed (or --build-lomiri DIR)")
    corpus_flags = ["--adapt-corpus"]
    for name in ("sample", "steps", "minutes"):
        if getattr(args, f"corpus_{name}") is not None:
            corpus_flags += [f"--corpus-{name}", getattr(args, f"corpus_{name}")]
    common = ["--jxl-effort", str(args.jxl_effort), *shared]
    jxl = _jxl(args.src, args.jxl_effort)
    base = _archive(args.src, args.work, "base", common)
    adapted = _archive(args.src, args.work, "corpus", [*common, *corpus_flags])
    n = jxl["subpixels"]
    for job in (base, adapted):
        job["bpsp"] = round(8 * job["total_bytes"] / n, 4)
        job["ratio_to_jxl"] = round(job["total_bytes"] / jxl["total_bytes"], 4)
    jxl["bpsp"] = round(8 * jxl["total_bytes"] / n, 4)
    result = {
        "src": str(args.src),
        "jxl": jxl,
        "base": base,
        "corpus": adapted,
        "corpus_to_base": round(adapted["total_bytes"] / base["total_bytes"], 4),
        "added_wall_s": round(adapted["wall_s"] - base["wall_s"], 1),
    }
    (args.work / "corpus-adaptation.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"JPEG-XL e{args.jxl_effort}: {jxl['total_bytes']} bytes, {jxl['bpsp']} bpsp")
    for name, job in (("base", base), ("--adapt-corpus", adapted)):
        print(
            f"{name}: {job['total_bytes']} bytes ({job['corpus_model_bytes']} of model), {job['bpsp']} bpsp, "
            f"x{job['ratio_to_jxl']} of JPEG-XL, {job['wall_s']} s, codecs {job['codecs']}"
        )
    print(f"corpus / base: x{result['corpus_to_base']}; the adaptation added {result['added_wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
