"""Tasks on a pool of Ray actors that may die at any moment, each task retried a few times.

Why its own module: a worker process can vanish mid-task (Ray's memory monitor kills it, its node
is lost, native code crashes). Each such loss must cost only a retry of the task it was running,
on a fresh actor, and after ``max_attempts`` a recorded failure of that one task, never the
command. Archive (a shard per task), restore (a chunk of images) and the benchmark (an image) all
run on this one loop.

Why our own loop rather than ``ray.util.ActorPool``: that pool has no notion of a lost actor (a
task whose actor dies raises out of ``get_next`` and the actor stays in the pool), no retry, no
per-task attempt count and no way to split a task after a crash; every one of those is what this
loop is for. The archive's write-once protocol needs nothing more: each attempt writes its own
shard manifest, and ``on_done`` records a task given up on.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from codec.errors import CallicError
from pipeline import cluster, events
from pipeline.storage import redact

T = TypeVar("T")


class WorkerStartError(CallicError):
    """The worker actors cannot be built (their codec factory fails): no retry can help."""

    exit_code = 11


@dataclass
class Outcome(Generic[T]):
    """A task's end: its result, or why it was given up on (``error``) after ``attempts`` tries."""

    task: T
    result: Any = None
    error: str | None = None
    attempts: int = 1


@dataclass
class PoolStats:
    worker_restarts: int = 0
    retries: int = 0


def describe(exc: BaseException) -> str:
    """One line about a Ray error: the task's own exception, else what happened to the worker."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        lines = str(cause).strip().splitlines()
        return redact(f"{type(cause).__name__}: {lines[-1] if lines else ''}")[:500]
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return redact(f"worker lost ({type(exc).__name__}: {lines[0] if lines else 'no detail'})")[:500]


def run(
    tasks: list[T],
    new_actor: Callable[[], Any],
    call: Callable[[Any, T], Any],
    p: cluster.Plan,
    max_attempts: int,
    on_done: Callable[[Outcome[T]], None],
    what: str = "task",
    split: Callable[[T], list[T]] | None = None,
    tick: Callable[[], None] | None = None,
    on_started: Callable[[], None] | None = None,
    labels: Callable[[T], dict[str, Any]] | None = None,
) -> PoolStats:
    """Run every task on ``p.workers`` actors built by ``new_actor``; ``call(actor, task)`` starts
    one and returns its ObjectRef. A task whose actor dies is retried on a new actor (split into
    the parts ``split`` gives, so that one item that kills its worker, say a huge image under
    memory pressure, does not take the others down with it); one that raises is retried as it is.
    ``on_done`` gets each task's outcome as soon as it is known; ``tick``, if given, is called
    about once a second while the actors start and tasks run (a progress bar polling per-item
    counts); ``on_started`` once every actor has started (built its codec). ``labels`` gives the
    fields that name a task in the ``<what>_retry`` event (a job and shard number)."""
    stats = PoolStats()
    actors = [new_actor() for _ in range(min(p.workers, len(tasks)))]
    queue: deque[tuple[T, int]] = deque((t, 1) for t in tasks)
    inflight: dict[Any, tuple[T, int, int]] = {}  # ref -> (task, attempt, actor slot)
    try:
        cluster.wait_placed(actors, p, tick)
        if on_started is not None:
            on_started()
        while queue or inflight:
            busy = {slot for _, _, slot in inflight.values()}
            for slot in range(len(actors)):
                if queue and slot not in busy:
                    task, attempt = queue.popleft()
                    inflight[call(actors[slot], task)] = (task, attempt, slot)
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=None if tick is None else 1.0)
            if tick is not None:
                tick()
            for ref in done:
                task, attempt, slot = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except RayError as exc:
                    died = _lost(exc, actors, slot, new_actor, stats)
                    reason = describe(exc)
                    if attempt < max_attempts:
                        stats.retries += 1
                        named = labels(task) if labels is not None else {}
                        events.emit(f"{what}_retry", level=logging.WARNING, **named, attempt=attempt + 1, reason=reason)
                        queue.extend((part, attempt + 1) for part in (split(task) if died and split else [task]))
                    else:
                        on_done(Outcome(task, error=f"gave up after {attempt} attempts: {reason}", attempts=attempt))
                    continue
                on_done(Outcome(task, result, attempts=attempt))
    finally:
        for actor in actors:
            ray.kill(actor)
    return stats


def _lost(exc: RayError, actors: list[Any], slot: int, new_actor: Callable[[], Any], stats: PoolStats) -> bool:
    """Whether the actor of ``slot`` was lost, then replaced; not when ``exc`` is the task's own
    exception (the actor lives)."""
    if isinstance(exc, RayTaskError):
        return False
    if isinstance(exc, RayActorError) and exc.actor_init_failed:
        raise WorkerStartError(f"the workers cannot start: {_init_cause(exc)}") from None
    ray.kill(actors[slot])  # it may only be unreachable: never let two attempts of a task run at once
    actors[slot] = new_actor()
    stats.worker_restarts += 1
    return True


def _init_cause(exc: RayActorError) -> str:
    """The last line of the creation task's traceback: the factory's own error message."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(exc).__name__
