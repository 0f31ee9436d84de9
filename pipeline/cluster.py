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

from pipeline.items import CodecFactory, Resources
from pipeline.shard import ShardResult, ShardTask, run_shard
from pipeline.storage import Store

log = logging.getLogger(__name__)


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` ("auto", "ray://host:10001", "host:6379"), or start a
    local one. Ray's own log lines stay out of the terminal unless something goes wrong."""
    if ray.is_initialized():
        return
    logging.getLogger("ray").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
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
    """How many actors, with what: GPU actors if the cluster has GPUs, else CPU actors splitting
    the cluster's cores (threads per actor = cores / workers)."""
    res = ray.cluster_resources()
    gpus, cpus = float(res.get("GPU", 0)), int(res.get("CPU", 1))
    if gpus >= gpus_per_worker > 0:
        n = workers or max(1, int(gpus // gpus_per_worker))
        return Plan(n, gpus_per_worker, max(1, cpus // n))
    n = workers or 1
    return Plan(n, 0.0, max(1, cpus // n))


class _ShardWorker:
    def __init__(self, factory: CodecFactory, src: Store, job: Store, resources: Resources, progress: Any) -> None:
        self.codec = factory(resources)
        self.src, self.job, self.progress = src, job, progress
        ids = ray.get_gpu_ids()
        self.gpu = ",".join(str(i) for i in ids) if ids else None

    def run(self, task: ShardTask) -> ShardResult:
        def on_item(ok: bool) -> None:
            if self.progress is not None:
                self.progress.add.remote(ok)

        return run_shard(task, self.src, self.job, self.codec, gpu=self.gpu, on_item=on_item)

    def pid(self) -> int:
        return os.getpid()


class _Restorer:
    def __init__(self, factory: CodecFactory, resources: Resources) -> None:
        self.codec = factory(resources)

    def run(self, fn: Any, *args: Any) -> Any:
        return fn(self.codec, *args)


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
Restorer = ray.remote(_Restorer)
Progress = ray.remote(num_cpus=0)(_Progress)


def actor_options(p: Plan) -> dict[str, Any]:
    return {"num_cpus": p.cpus_per_worker, "num_gpus": p.gpus_per_worker, "max_restarts": 0}
