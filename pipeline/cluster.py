"""Ray: connecting, sizing the worker pool, and the actors that hold a codec.

One actor per GPU when the cluster has GPUs (``num_gpus`` = ``--gpus-per-worker``), else CPU
actors that share the machine's cores. Each actor builds its codec once (the model is loaded once
per process) and then runs shard after shard.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import ray

from codec.errors import CallicError
from pipeline.items import CodecFactory, Resources
from pipeline.shard import ShardResult, ShardTask, run_shard, worker_name
from pipeline.storage import Store

log = logging.getLogger(__name__)


class ClusterError(CallicError):
    """The Ray cluster cannot run the job as asked (no live node, not enough resources)."""

    exit_code = 11


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` ("auto", "ray://host:10001", "host:6379"), or start a
    local one. Ray's own log lines stay out of the terminal unless something goes wrong."""
    if ray.is_initialized():
        return
    logging.getLogger("ray").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": True}
    if address:
        kwargs["address"] = address
    else:
        kwargs["include_dashboard"] = False
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
    its node's CPUs shared among that node's GPU actors. Without: by default one actor per node,
    with the node's cores as threads; ``workers`` actors split the cores when given. No actor asks
    for more CPUs than one node has, so every actor can be placed."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        raise ClusterError("the Ray cluster has no live node")
    node_cpus = [int(r.get("CPU", 0)) for r in nodes]
    gpu_nodes = [r for r in nodes if r.get("GPU", 0) >= gpus_per_worker > 0]
    if gpu_nodes:
        per_node = [max(1, int(r["GPU"] // gpus_per_worker)) for r in gpu_nodes]
        n = workers or sum(per_node)
        cpus = min(max(1, int(r.get("CPU", 1)) // k) for r, k in zip(gpu_nodes, per_node, strict=True))
        return Plan(n, gpus_per_worker, cpus)
    n = workers or len(nodes)
    cpus = max(1, min(sum(node_cpus) // n, max(node_cpus)))
    return Plan(n, 0.0, cpus)


PLACEMENT_TIMEOUT_S = 300


def wait_placed(actors: list[Any], p: Plan) -> None:
    """Fail clearly, instead of waiting forever, when the cluster cannot host the actors."""
    ready, _ = ray.wait([a.pid.remote() for a in actors], num_returns=len(actors), timeout=PLACEMENT_TIMEOUT_S)
    if len(ready) < len(actors):
        raise ClusterError(
            f"only {len(ready)} of {len(actors)} workers ({p.cpus_per_worker} CPUs, {p.gpus_per_worker} GPUs each) "
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


def actor_options(p: Plan) -> dict[str, Any]:
    return {"num_cpus": p.cpus_per_worker, "num_gpus": p.gpus_per_worker, "max_restarts": 0}
