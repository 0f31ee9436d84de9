"""Where the benches run: in this process, or on Ray actors through ``pipeline.pool`` (the loop
archive and restore run on), lossless and lossy alike, each row logged as it is made (``--resume``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from jobs.bench.anchors import Codec, Row
from jobs.bench.codecs import BenchCodecs
from jobs.bench.measure import bench_image, new_row
from jobs.bench.rowlog import RowLog

RAY_ATTEMPTS = 2  # an image whose worker dies is tried once more on a fresh one, then recorded as failed
Task = tuple[str, str, frozenset[str]]  # (path, image name, the row keys already done)


def run_images_on_ray(
    tasks: Sequence[Task],
    factory: Any,
    work: Callable[..., list[Row]],
    args: tuple[Any, ...],
    lost: Callable[[Task, str], list[Row]],
    on_rows: Callable[[list[Row]], None],
    workers: int,
) -> None:
    """The benchmarks' runner on Ray actors (``pipeline.pool``, the loop archive and restore run
    on), one image per task, for the lossless and the lossy bench alike: each actor builds the
    codecs once (``factory``, with a ``device``), then runs ``work(codecs, path, name, skip,
    *args)`` per image; ``on_rows`` gets each image's rows as it ends. An image whose worker dies
    (a codec crash in native code, the memory monitor) is retried once on a fresh worker, then
    gets the rows ``lost(task, reason)`` makes, and the run goes on."""
    from pipeline import cluster, pool
    from pipeline.items import Resources

    p = cluster.plan(workers, 1.0 if factory.device == "cuda" else 0.0)
    p = cluster.Plan(min(p.workers, len(tasks)), p.gpus_per_worker, p.cpus_per_worker)
    resources = Resources(p.device, p.cpus_per_worker)

    def on_done(outcome: pool.Outcome[Task]) -> None:
        on_rows(outcome.result if outcome.error is None else lost(outcome.task, outcome.error))

    pool.run(
        list(tasks),
        lambda: cluster.CodecHolder.options(**cluster.actor_options(p)).remote(factory, resources),
        lambda actor, task: actor.run.remote(work, *task, *args),
        p,
        RAY_ATTEMPTS,
        on_done,
        "bench_image",
        labels=lambda task: {"image": task[1]},
    )


def run(
    fs: Any,
    paths: Sequence[str],
    names: Sequence[str],
    codecs: Sequence[Codec],
    repeat: int,
    log: RowLog,
    quiet: bool = False,
) -> list[Row]:
    """Every (image, codec) pair not already in ``log.done``, in this process, with a progress bar
    (none if ``quiet``), each row logged as it is made. Returns all rows, in order."""
    from tqdm import tqdm

    codec_names = [c.name for c in codecs]
    missing = sum((n, c) not in log.done for n in names for c in codec_names)
    with tqdm(total=missing, desc="bench", unit="run", file=sys.stderr, disable=quiet) as bar:

        def on_row(row: Row) -> None:
            log.add(row)
            bar.update()

        for path, name in zip(paths, names, strict=True):
            skip = frozenset(c for c in codec_names if (name, c) in log.done)
            if len(skip) < len(codec_names):  # else not even read again
                bar.set_postfix_str(name, refresh=False)
                bench_image(codecs, fs, path, name, repeat, skip, on_row)
    return ordered(log, names, codec_names)


def ordered(log: RowLog, names: Sequence[str], codec_names: Sequence[str]) -> list[Row]:
    return [log.done[(n, c)] for n in names for c in codec_names if (n, c) in log.done]


def run_on_ray(
    fs: Any,
    paths: Sequence[str],
    names: Sequence[str],
    factory: BenchCodecs,
    codec_names: Sequence[str],
    repeat: int,
    log: RowLog,
    workers: int,
) -> list[Row]:
    """The lossless bench on Ray workers (``run_images_on_ray``); rows are logged as images
    finish. Timings then include whatever the workers share (cores, memory bandwidth): compare
    codecs within one run, not across runs with different worker counts."""
    from pipeline.progress import ProgressBar

    todo = [
        (path, name, frozenset(c for c in codec_names if (name, c) in log.done))
        for path, name in zip(paths, names, strict=True)
        if any((name, c) not in log.done for c in codec_names)
    ]
    if not todo:
        return ordered(log, names, codec_names)
    bar = ProgressBar(sum(len(codec_names) - len(skip) for _, _, skip in todo))
    made = 0

    def on_rows(rows: list[Row]) -> None:
        nonlocal made
        for row in rows:
            log.add(row)
        made += len(rows)
        bar.update(made, 0)

    def lost(task: Task, reason: str) -> list[Row]:
        return [new_row(task[1], c, error=reason) for c in codec_names if c not in task[2]]

    try:
        run_images_on_ray(todo, factory, _bench_task, (fs, repeat), lost, on_rows, workers)
    finally:
        bar.close()
    return ordered(log, names, codec_names)


def _bench_task(codecs: Sequence[Codec], path: str, name: str, skip: frozenset[str], fs: Any, repeat: int) -> list[Row]:
    return bench_image(codecs, fs, path, name, repeat, skip)
