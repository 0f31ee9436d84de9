"""Running a job: which images are left, shards out to actors, retries, and the compacted manifest.

The same loop serves a new job and a resumed one: what is left is always computed from the shard
manifests under the job folder, so a driver killed at any moment loses at most the shards in
flight, and ``resume`` picks them up. A worker that dies (killed, out of memory, node lost) is
replaced and its shard retried (``pipeline.pool``, the loop restore and the benchmark run on
too); after ``max_attempts`` tries its images become failed rows, so no image ever goes missing
from the manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from pipeline import cluster, events, manifest, pool
from pipeline.items import CodecFactory, Resources
from pipeline.job import JobSpec
from pipeline.progress import ProgressBar
from pipeline.shard import ShardResult, ShardTask, failed_rows
from pipeline.storage import Store


@dataclass
class RunSummary:
    images: int = 0  # images this run set out to do
    ok: int = 0
    failed: int = 0
    source_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0
    workers: int = 0
    worker_restarts: int = 0
    errors: list[str] = field(default_factory=list)


def pending_tasks(spec: JobSpec, sources: pa.Table, rows: pa.Table, retry_failed: bool = False) -> list[ShardTask]:
    """Shards with images still to do: never tried; or never succeeded, whose latest failure is
    retryable (storage, timeout, lost worker) and who have failed fewer than ``max_attempts``
    times. A permanent failure (the input itself is unreadable, truncated, unsupported...) is not
    retried: the same bytes fail the same way. ``retry_failed`` retries every failed image once
    more, whatever its kind and attempts (the user fixed the files, or the outage is over). Each
    image's attempt number continues from its manifest rows."""
    tries: dict[str, int] = {}
    for key, attempt in zip(rows["source_key"].to_pylist(), rows["attempt"].to_pylist(), strict=True):
        tries[key] = max(tries.get(key, 0), attempt or 1)

    def settled(r: dict[str, Any]) -> bool:  # succeeded, or failed and not to be retried
        if r["status"] == "ok":
            return True
        return not retry_failed and (not manifest.row_retryable(r) or tries[r["source_key"]] >= spec.max_attempts)

    final = manifest.compact(rows).select(["source_key", "status", "error", "retryable"]).to_pylist()
    done = {r["source_key"] for r in final if settled(r)}
    by_shard: dict[int, list[str]] = {}
    for shard, key in zip(sources["shard"].to_pylist(), sources["source_key"].to_pylist(), strict=True):
        if key not in done:
            by_shard.setdefault(shard, []).append(key)
    return [
        ShardTask(
            spec.job_id,
            shard,
            keys,
            {k: tries.get(k, 0) + 1 for k in keys},
            spec.pack,
            spec.verify,
            spec.max_source_bytes,
            spec.read_timeout_s,
        )
        for shard, keys in sorted(by_shard.items())
    ]


def run(
    spec: JobSpec,
    src: Store,
    job: Store,
    factory: CodecFactory,
    tasks: list[ShardTask],
    workers: int | None,
    gpus_per_worker: float,
    show_progress: bool = True,
) -> RunSummary:
    """Process ``tasks`` on Ray actors until every one is done or given up on."""
    summary = RunSummary(images=sum(len(t.keys) for t in tasks))
    start = time.perf_counter()
    if not tasks:
        return summary
    p = cluster.plan(workers, gpus_per_worker)
    p = cluster.Plan(min(p.workers, len(tasks)), p.gpus_per_worker, p.cpus_per_worker)
    summary.workers = p.workers
    resources = Resources(p.device, p.cpus_per_worker)
    progress = cluster.ProgressCounts()

    def new_actor() -> Any:
        return cluster.ShardWorker.options(**cluster.actor_options(p)).remote(
            factory, src, job, resources, progress.actor
        )

    events.emit(
        "job_run", job=spec.job_id, shards=len(tasks), images=summary.images, workers=p.workers, device=p.device
    )

    def on_done(outcome: pool.Outcome[ShardTask]) -> None:
        if outcome.error is not None:  # given up on: its images become failed rows, none goes missing
            rows = failed_rows(outcome.task, outcome.error)
            manifest.write_shard(job, outcome.task.shard, f"abandoned-{time.time_ns()}", rows)
            summary.failed += len(rows)
            summary.errors += [f"{r['source_key']}: {r['error']}" for r in rows]
            return
        result: ShardResult = outcome.result
        summary.ok += result.ok
        summary.failed += result.failed
        summary.source_bytes += result.source_bytes
        summary.stored_bytes += result.stored_bytes
        summary.errors += result.errors
        events.emit(
            "shard_done",
            job=spec.job_id,
            shard=result.shard,
            ok=result.ok,
            failed=result.failed,
            seconds=round(result.seconds, 3),
            manifest=result.manifest_key,
        )

    # The actors load the model as they start: the bar says so, with its elapsed time moving.
    bar = ProgressBar(summary.images, enabled=show_progress, desc=f"archive: starting {p.workers} worker(s)")
    try:
        stats = pool.run(
            tasks,
            new_actor,
            lambda actor, task: actor.run.remote(task),
            p,
            spec.max_attempts,
            on_done,
            "shard",
            tick=lambda: bar.update(*progress.counts((summary.ok, summary.failed))),  # per image, as workers finish
            on_started=lambda: bar.describe("archive"),
            labels=lambda task: {"job": spec.job_id, "shard": task.shard},
        )
        bar.update(summary.ok, summary.failed)  # the exact counts (live ones may lag or count retries)
    finally:
        bar.close()
        ray.kill(progress.actor)
    summary.worker_restarts = stats.worker_restarts
    summary.seconds = time.perf_counter() - start
    return summary


def finish(job: Store) -> pa.Table:
    """Rebuild and store the compacted manifest; returns it."""
    table = manifest.load(job)
    manifest.write_compacted(job, table)
    return table
