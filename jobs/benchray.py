"""The benchmarks' one runner on Ray actors, lossless and lossy alike (``pipeline.pool`` under
it): its own module so that both benches import it and neither imports the other."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Row = dict[str, Any]

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
