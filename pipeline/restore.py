"""Restoring archived images: manifest rows -> stored bytes (one ranged read each) -> the codec's
restore (which checks hashes) -> the file under OUT, at its original relative name.

An object key comes from a manifest, i.e. from storage someone else may control, so before
anything is written its name is checked to stay inside OUT: absolute names, ``..``, empty or
``.`` components, backslashes and drive letters are refused.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from codec.errors import CallicError
from pipeline import cluster, events, job, manifest
from pipeline.items import CodecFactory, ItemCodec, Resources
from pipeline.progress import ProgressBar
from pipeline.storage import Store, redact

CHUNK = 16


class UnsafeKeyError(CallicError):
    """A key that would be written outside the restore folder."""

    exit_code = 9


def safe_key(key: str) -> str:
    """``key`` if it names a file strictly inside the output folder; raises otherwise."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\0" in key
        or any(p in ("", ".", "..") for p in parts)
        or (len(parts[0]) >= 2 and parts[0][1] == ":")
    ):
        raise UnsafeKeyError(f"refused: key {key!r} would escape the output folder")
    return key


@dataclass
class RestoreSummary:
    jobs: int = 0
    images: int = 0
    restored: int = 0
    failed: int = 0
    skipped_failed_rows: int = 0  # images the archive itself records as failed
    bytes_written: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def plan(archive: Store, match: str | None) -> tuple[list[tuple[Store, str, dict[str, Any]]], int, int]:
    """(job store, output key, manifest row) of every image to restore, the number of jobs, and
    the number of images skipped because the archive has them as failed."""
    ids = job.find_jobs(archive)
    if not ids:
        raise job.JobError(f"{redact(archive.url)} holds no archive job")
    todo, skipped = [], 0
    for job_id in ids:
        store = archive.child(job_id) if job_id else archive
        table: pa.Table = manifest.load(store)
        for row in table.to_pylist():
            if match and not fnmatch.fnmatchcase(row["source_key"], match):
                continue
            if row["status"] != "ok":
                skipped += 1
                continue
            # One job folder restores to OUT/key; a DST of jobs to OUT/JOB/key (jobs may share keys).
            out_key = f"{job_id}/{row['source_key']}" if job_id else row["source_key"]
            todo.append((store, out_key, row))
    return todo, len(ids), skipped


def restore_rows(
    codec: ItemCodec, out: Store, items: list[tuple[Store, str, dict[str, Any]]]
) -> list[tuple[str, str | None, int]]:
    """Restore each item; returns (output key, error or None, bytes written) per item."""
    results = []
    for store, out_key, row in items:
        try:
            safe_key(out_key)
            if row["offset"] is not None:
                blob = store.read_range(row["output_key"], row["offset"], row["length"])
            else:
                blob = store.read(row["output_key"])
            data = codec.restore(blob, row)
            out.write(out_key, data)
            results.append((out_key, None, len(data)))
        except Exception as exc:
            results.append((out_key, f"{type(exc).__name__}: {exc}", 0))
    return results


def run(
    archive: Store,
    out: Store,
    factory: CodecFactory,
    match: str | None,
    workers: int | None,
    gpus_per_worker: float,
    show_progress: bool = True,
) -> RestoreSummary:
    start = time.perf_counter()
    out.check_writable()
    todo, n_jobs, skipped = plan(archive, match)
    summary = RestoreSummary(jobs=n_jobs, images=len(todo), skipped_failed_rows=skipped)
    if not todo:
        summary.seconds = time.perf_counter() - start
        return summary
    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
    p = cluster.plan(workers, gpus_per_worker)
    p = cluster.Plan(min(p.workers, len(chunks)), p.gpus_per_worker, p.cpus_per_worker)
    resources = Resources(p.device, p.cpus_per_worker)
    actors = [
        cluster.CodecHolder.options(**cluster.actor_options(p)).remote(factory, resources) for _ in range(p.workers)
    ]
    events.emit("restore_run", archive=redact(archive.url), out=redact(out.url), images=len(todo), workers=p.workers)
    bar = ProgressBar(len(todo), enabled=show_progress)
    try:
        cluster.wait_placed(actors, p)
        pending = list(chunks)
        inflight: dict[Any, int] = {}
        while pending or inflight:
            busy = set(inflight.values())
            for slot, actor in enumerate(actors):
                if pending and slot not in busy:
                    inflight[actor.run.remote(restore_rows, out, pending.pop(0))] = slot
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                inflight.pop(ref)
                for key, error, nbytes in ray.get(ref):
                    if error is None:
                        summary.restored += 1
                        summary.bytes_written += nbytes
                    else:
                        summary.failed += 1
                        summary.errors.append(f"{key}: {error}")
                        events.emit("restore_failed", level=30, key=key, error=error)
            bar.update(summary.restored, summary.failed)
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
    summary.seconds = time.perf_counter() - start
    return summary
