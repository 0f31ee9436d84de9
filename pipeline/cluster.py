"""Ray: connecting, sizing the worker pool, and the actors that hold a codec.

One actor per GPU when the cluster has GPUs (``num_gpus`` = ``--gpus-per-worker``), else CPU
actors that share the machine's cores. Each actor builds its codec once (the model is loaded once
per process) and then runs shard after shard.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayError

from codec.errors import CallicError
from pipeline.cores import available_cores
from pipeline.items import CodecFactory, Resources
from pipeline.shard import ShardResult, ShardTask, run_shard, worker_name
from pipeline.storage import Store

log = logging.getLogger(__name__)


class ClusterError(CallicError):
    """The Ray cluster cannot run the job as asked (no live node, not enough resources)."""

    exit_code = 11


def connected() -> bool:
    """Whether this process has joined a Ray cluster already (``connect`` then does nothing)."""
    return ray.is_initialized()


def connect(address: str | None, log_json: bool = False) -> None:
    """Join the Ray cluster at ``address`` ("auto", "ray://host:10001", "host:6379"), or start a
    local one. Ray's own log lines stay out of the terminal unless something goes wrong. With
    ``log_json`` the workers' output is not forwarded to the driver at all (``log_to_driver``):
    stderr must then hold JSON lines only; it stays in Ray's session logs (``/tmp/ray``).

    A local cluster gets the cores this process really has (Ray counts the machine's, ignoring CPU
    affinity), so that workers x threads never exceeds them; workers on a remote cluster get
    ``OMP_WAIT_POLICY`` (sleeping OpenMP threads: see ``jobs/runtime.py``) as a job environment
    variable, local ones inherit it."""
    if ray.is_initialized():
        return
    logging.getLogger("ray").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": not log_json}
    if address:
        kwargs["address"] = address
        kwargs["runtime_env"] = {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}
    else:
        kwargs["include_dashboard"] = False
        kwargs["num_cpus"] = available_cores()
    ray.init(**kwargs)


@dataclass(frozen=True)
class Plan:
    workers: int
    gpus_per_worker: float
    cpus_per_worker: int

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_worker > 0 else "cpu"


def plan(workers: int | None, gpus_per_worker: float) -> Plan:
    """How many actors, with what. With GPUs: one actor per ``gpus_per_worker`` GPUs, each with
    its node's CPUs shared among that node's GPU actors. Without: by default one actor per node
    that has CPUs, with the node's cores as threads; ``workers`` actors split the cores when given,
    at most one actor per core. No actor asks for more CPUs than one node has, so every actor can
    be placed, and as each actor runs as many threads as it has CPUs, no node runs more threads
    than it has cores."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        raise ClusterError("the Ray cluster has no live node")
    node_cpus = [int(r.get("CPU", 0)) for r in nodes if int(r.get("CPU", 0)) >= 1]
    gpu_nodes = [r for r in nodes if r.get("GPU", 0) >= gpus_per_worker > 0]
    if gpu_nodes:
        per_node = [max(1, int(r["GPU"] // gpus_per_worker)) for r in gpu_nodes]
        n = workers or sum(per_node)
        cpus = min(max(1, int(r.get("CPU", 1)) // k) for r, k in zip(gpu_nodes, per_node, strict=True))
        return Plan(n, gpus_per_worker, cpus)
    if not node_cpus:
        raise ClusterError("the Ray cluster has no node with CPUs for workers")
    n = workers or len(node_cpus)
    if n > sum(node_cpus):
        log.warning("%d workers asked for, the cluster has %d CPUs: using %d", n, sum(node_cpus), sum(node_cpus))
        n = sum(node_cpus)
    cpus = max(1, min(sum(node_cpus) // n, max(node_cpus)))
    return Plan(n, 0.0, cpus)


PLACEMENT_TIMEOUT_S = 300


def wait_placed(actors: list[Any], p: Plan, tick: Callable[[], None] | None = None) -> None:
    """Wait until every actor has started (built its codec: loaded the model), calling ``tick``
    about once a second meanwhile (a progress bar's clock); fail clearly, instead of waiting
    forever, when the cluster cannot host the actors."""
    pending = [a.pid.remote() for a in actors]
    deadline = time.monotonic() + PLACEMENT_TIMEOUT_S
    while pending and (left := deadline - time.monotonic()) > 0:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=min(1.0, left))
        if tick is not None:
            tick()
    ready = len(actors) - len(pending)
    if ready < len(actors):
        raise ClusterError(
            f"only {ready} of {len(actors)} workers ({p.cpus_per_worker} CPUs, {p.gpus_per_worker} GPUs each) "
            f"started within {PLACEMENT_TIMEOUT_S} s: the cluster lacks the resources (see `ray status`)"
        )


class _ShardWorker:
    def __init__(self, factory: CodecFactory, src: Store, job: Store, resources: Resources, progress: Any) -> None:
        self.codec = factory(resources)
        self.src, self.job, self.progress = src, job, progress
        ids = ray.get_gpu_ids()
        self.gpu = ",".join(str(i) for i in ids) if ids else None
        # host:pid/node: the node tells workers apart on a multi-node cluster of one host too.
        self.name = f"{worker_name()}/{ray.get_runtime_context().get_node_id()[:8]}"

    def run(self, task: ShardTask) -> ShardResult:
        def on_item(ok: bool) -> None:
            if self.progress is not None:
                self.progress.add.remote(ok)

        return run_shard(task, self.src, self.job, self.codec, gpu=self.gpu, on_item=on_item, worker=self.name)

    def pid(self) -> int:
        return os.getpid()


class _CodecHolder:
    """Holds what ``factory`` builds (a codec, a benchmark's codecs) and runs module-level
    functions on it: restore chunks, benchmark images."""

    def __init__(self, factory: Any, resources: Resources) -> None:
        self.codec = factory(resources)

    def run(self, fn: Any, *args: Any) -> Any:
        return fn(self.codec, *args)

    def pid(self) -> int:
        return os.getpid()


class _Progress:
    """Counts images as workers finish them, for the driver's progress bar (the manifest, not
    this, is the record: a retried shard counts twice here)."""

    def __init__(self) -> None:
        self.ok = self.failed = 0

    def add(self, ok: bool) -> None:
        if ok:
            self.ok += 1
        else:
            self.failed += 1

    def counts(self) -> tuple[int, int]:
        return self.ok, self.failed


ShardWorker = ray.remote(_ShardWorker)
CodecHolder = ray.remote(_CodecHolder)
Progress = ray.remote(num_cpus=0)(_Progress)


class ProgressCounts:
    """The driver's side of the ``Progress`` actor. Polling never blocks the driver: each call
    collects the answer to the previous request if it has come, sends the next one, and returns
    the latest counts (so they lag one poll, about a second). An actor still starting (its process
    takes seconds on a busy machine) is not lost, only late. Ray may kill the actor like any
    other (memory pressure, its node lost), and it only feeds the progress bar, so losing it must
    never stop a job: from then on the bar shows the counts of finished shards instead (workers'
    updates to a dead actor are dropped by Ray without harm)."""

    def __init__(self) -> None:
        self.actor = Progress.remote()
        self.lost = False
        self._asked: Any = None  # the request not answered yet
        self._last = (0, 0)

    def counts(self, fallback: tuple[int, int]) -> tuple[int, int]:
        """(ok, failed): the actor's latest answer, or ``fallback`` (the exact counts of finished
        work) once the actor is lost, or where it is ahead (a stuck actor's counts stop moving)."""
        if not self.lost:
            try:
                if self._asked is not None and ray.wait([self._asked], timeout=0)[0]:
                    self._last = tuple(ray.get(self._asked))
                    self._asked = None
                if self._asked is None:
                    self._asked = self.actor.counts.remote()
            except RayError as exc:
                self.lost = True
                log.warning("progress counter lost (%s): counting finished shards instead", type(exc).__name__)
        return self._last if not self.lost and sum(self._last) >= sum(fallback) else fallback


def actor_options(p: Plan) -> dict[str, Any]:
    return {"num_cpus": p.cpus_per_worker, "num_gpus": p.gpus_per_worker, "max_restarts": 0}
