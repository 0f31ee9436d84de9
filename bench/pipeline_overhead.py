"""What the pipeline costs on top of the codec, and what a second worker buys.

Anchor: the codec's own work on every image, in this process, one after another (the very call a
worker makes: read checks, encode with adaptation, verify by decoding), summed. Then the same
images as real archive jobs on a local Ray cluster, with 1 worker (all cores) and N workers
(cores split): job wall time (actor start-up and model loading included) against the anchor, and
images per second. Run it on an otherwise idle machine.

    python bench/pipeline_overhead.py IMAGES --steps 2 --limit 8 --workers 2 --out bench-pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray

from jobs.archive import ARCHIVE_SUFFIXES
from jobs.archivecodec import ArchiveCodec, CodecSettings
from jobs.cli import main as cli
from pipeline import job, manifest
from pipeline.items import Resources
from pipeline.storage import Store


def anchor(src: str, keys: list[str], settings: CodecSettings, threads: int) -> tuple[float, list[float]]:
    store = Store(src)
    codec = ArchiveCodec(settings, Resources("cpu", threads))
    times = []
    for key in keys:
        data = store.read(key)
        start = time.perf_counter()
        [result] = codec.encode_batch([(key, data)], verify=True)
        times.append(time.perf_counter() - start)
        if isinstance(result, BaseException):
            raise SystemExit(f"{key}: {result}")
    return sum(times), times


def archive_job(src: str, dst: Path, job_id: str, steps: int, workers: int) -> tuple[float, int]:
    args = [
        "archive",
        src,
        str(dst),
        "--job-id",
        job_id,
        "--steps",
        str(steps),
        "--workers",
        str(workers),
        "--shard-size",
        "1",
        "--quiet",
    ]
    start = time.perf_counter()
    rc = cli(args)
    seconds = time.perf_counter() - start
    rows = manifest.load(Store(dst / job_id)).to_pylist()
    if rc != 0 or any(r["status"] != "ok" for r in rows):
        raise SystemExit(f"job {job_id} failed (exit {rc})")
    return seconds, len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="the many-worker run")
    p.add_argument("--out", default="bench-pipeline")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    store, items = job.list_sources(args.images, {}, ARCHIVE_SUFFIXES)
    keys = [k for k, _ in items][: args.limit]
    src = tempfile.mkdtemp(prefix="callic-bench-src-")
    for k in keys:  # the job archives exactly these images
        Path(src, k).parent.mkdir(parents=True, exist_ok=True)
        Path(src, k).symlink_to(Path(store.path(k)))
    settings = CodecSettings(steps=args.steps)
    anchor_s, per_image = anchor(src, keys, settings, cores)
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR")
    dst = Path(tempfile.mkdtemp(prefix="callic-bench-dst-"))
    one_s, n = archive_job(src, dst, "one", args.steps, 1)
    many_s, _ = archive_job(src, dst, "many", args.steps, args.workers)
    ray.shutdown()
    result = {
        "images": n,
        "steps": args.steps,
        "cores": cores,
        "anchor_sum_s": round(anchor_s, 2),
        "anchor_median_image_s": round(statistics.median(per_image), 3),
        "job_1_worker_s": round(one_s, 2),
        "overhead_1_worker": round(one_s / anchor_s - 1, 4),
        f"job_{args.workers}_workers_s": round(many_s, 2),
        "images_per_s_1_worker": round(n / one_s, 4),
        f"images_per_s_{args.workers}_workers": round(n / many_s, 4),
        "speedup": round(one_s / many_s, 3),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "overhead.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
