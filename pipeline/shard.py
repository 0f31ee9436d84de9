"""Processing one shard: read -> encode (with verification) -> store -> one manifest file.

Plain Python, no Ray: the Ray actor in ``pipeline.cluster`` wraps it, and tests can call it
directly. Every attempt writes under a fresh random token, so objects are written once and never
overwritten, and an attempt that dies half-way leaves only unreferenced objects behind (the
manifest is written last). Reading runs ahead in threads while the codec works.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pipeline import manifest
from pipeline.items import Encoded, ItemCodec
from pipeline.pack import PackWriter
from pipeline.storage import MAX_SOURCE_BYTES, READ_TIMEOUT_S, Store, redact

READ_THREADS = 4


@dataclass
class ShardTask:
    job_id: str
    shard: int
    keys: list[str]
    attempts: dict[str, int]  # attempt number of each key in this run (1 = first try)
    pack: bool
    verify: bool
    max_source_bytes: int = MAX_SOURCE_BYTES  # larger sources are failed rows
    read_timeout_s: float = READ_TIMEOUT_S  # per object-store read attempt


@dataclass
class ShardResult:
    shard: int
    manifest_key: str
    ok: int = 0
    failed: int = 0
    source_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _error(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")[:2000]


def _read_ahead(src: Store, task: ShardTask, window: int) -> Iterator[tuple[str, bytes | BaseException]]:
    """(key, bytes or the read error), in order, with up to ``window`` reads in flight. Reads
    refuse non-regular files and sources over the task's size or time limit (``Store.read_source``):
    one bad entry is one failed row, never a hung or exhausted worker."""
    keys = task.keys

    def read(key: str) -> bytes | BaseException:
        try:
            return src.read_source(key, task.max_source_bytes, task.read_timeout_s)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(READ_THREADS) as pool:
        futures = [pool.submit(read, k) for k in keys[:window]]
        for i, key in enumerate(keys):
            if i + window < len(keys):
                futures.append(pool.submit(read, keys[i + window]))
            yield key, futures[i].result()
            futures[i] = None  # type: ignore[call-overload]  # drop the bytes once used


def run_shard(
    task: ShardTask,
    src: Store,
    job: Store,
    codec: ItemCodec,
    gpu: str | None = None,
    on_item: Callable[[bool], None] | None = None,
    worker: str | None = None,
) -> ShardResult:
    start = time.perf_counter()
    token = uuid.uuid4().hex[:10]
    base = {"job": task.job_id, "shard": task.shard, "worker": worker or worker_name(), "gpu": gpu}
    rows: list[dict[str, Any]] = []
    pack = PackWriter() if task.pack else None
    pack_key = f"data/shard-{task.shard:06d}-{token}.pack"
    batch: list[tuple[str, bytes]] = []

    def row(key: str, **fields: Any) -> dict[str, Any]:
        return {
            **base,
            "source_key": key,
            "attempt": task.attempts.get(key, 1),
            "time": dt.datetime.now(dt.UTC),
            **fields,
        }

    def fail(key: str, exc: BaseException, **fields: Any) -> None:
        rows.append(row(key, status="failed", error=_error(exc), retryable=manifest.retryable(exc), **fields))
        if on_item:
            on_item(False)

    def store(key: str, data: bytes, enc: Encoded) -> None:
        fields = {
            **enc.fields,
            "source_bytes": len(data),
            "source_sha256": hashlib.sha256(data).hexdigest(),
            "compressed_bytes": len(enc.blob),
            "object_sha256": hashlib.sha256(enc.blob).hexdigest(),
        }
        try:
            if pack is not None:
                offset, length = pack.add(key, enc.blob)
                fields.update(output_key=pack_key, offset=offset, length=length)
            else:
                out = f"objects/{task.shard:06d}-{token}/{key}{enc.suffix}"
                job.write_once(out, enc.blob)
                fields.update(output_key=out, length=len(enc.blob))
        except Exception as exc:
            stored = ("output_key", "offset", "length", "object_sha256")
            fail(key, exc, **{k: v for k, v in fields.items() if k not in stored})
            return
        rows.append(row(key, status="ok", **fields))
        if on_item:
            on_item(True)

    def flush() -> None:
        if not batch:
            return
        results = codec.encode_batch(batch, task.verify)
        for (key, data), enc in zip(batch, results, strict=True):
            if isinstance(enc, BaseException):
                fail(key, enc, source_bytes=len(data), source_sha256=hashlib.sha256(data).hexdigest())
            else:
                store(key, data, enc)
        batch.clear()

    for key, data in _read_ahead(src, task, window=max(2 * codec.batch_size, READ_THREADS)):
        if isinstance(data, BaseException):
            fail(key, data)
            continue
        batch.append((key, data))
        if len(batch) >= codec.batch_size:
            flush()
    flush()

    if pack is not None and len(pack):
        # The pack is written before the manifest that points into it; if this write fails the
        # shard attempt fails as a whole and is retried.
        job.write_once(pack_key, pack.getvalue())
    result = ShardResult(task.shard, manifest.write_shard(job, task.shard, token, rows))
    for r in rows:
        if r["status"] == "ok":
            result.ok += 1
            result.stored_bytes += r["compressed_bytes"]
            result.source_bytes += r["source_bytes"]
        else:
            result.failed += 1
            result.errors.append(f"{r['source_key']}: {r['error']}")
    result.seconds = time.perf_counter() - start
    return result


def failed_rows(task: ShardTask, reason: str) -> list[dict[str, Any]]:
    """Rows for a shard the job gave up on (its workers kept dying): each image a failed row, so
    that no image is silently missing from the manifest. Retryable: a later run may have the
    memory or the healthy node this one lacked."""
    now = dt.datetime.now(dt.UTC)
    return [
        {
            "job": task.job_id,
            "shard": task.shard,
            "source_key": key,
            "status": "failed",
            "error": reason,
            "retryable": True,
            "attempt": task.attempts.get(key, 1),
            "worker": worker_name(),
            "time": now,
        }
        for key in task.keys
    ]
