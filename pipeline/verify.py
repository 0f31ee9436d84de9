"""``verify``: fixity of an archive job, checked from its folder alone, without a restore.

Archivists check on a schedule that what is stored is still what was written. For every image the
job holds (the compacted manifest's ``ok`` rows: what a restore would read) this reads its stored
bytes and reports, per object:

- ``missing``: the object (or the pack it is in) is not there;
- ``truncated``: shorter than the manifest says (an unpacked object of fewer than ``length``
  bytes, a pack that ends before ``offset + length``);
- ``altered``: the bytes are not those written. Checked against the row's ``object_sha256``;
  rows written before that column existed are checked for what they have: a packed entry
  against its pack's own index (``pipeline.pack``, which holds each entry's SHA-256), a
  passed-through file against ``source_sha256`` (it is the source's bytes), an unpacked object
  against its length only (counted as ``length_only``). An object longer than its row says is
  altered too;
- ``undecodable`` (with ``full``): the row's codec cannot give back exactly the image the row
  describes (``ItemCodec.restore``, the restore's own checks, nothing written);
- ``unsafe``: a row restore would refuse (its key is not one of the job's objects, or leads out
  of the job folder): nothing is read for it;

and ``orphans``: objects under ``objects/`` and ``data/`` that no manifest row of any attempt
references, left by attempts that died between storing and writing their manifest, or still
running. ``prune`` deletes those older than ``min_age_s`` (an attempt running now has written
its objects but not yet its manifest; its objects are young).

The reads run on the pool restore runs on (``pipeline.pool``), one object (a pack: once, whole)
per task, so a job of many packs is checked in parallel; a worker that dies on an object is
retried, then the object is reported as unreadable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline import cluster, manifest, pack, pool
from pipeline.items import CodecFactory, ItemCodec, Resources
from pipeline.restore import UnsafeKeyError, check_inside, check_row, use_job_models, windows_local
from pipeline.storage import Store

OBJECT_DIRS = ("objects", "data")  # where shard attempts store images (``pipeline.shard``)
ATTEMPTS = 2
PROBLEMS = ("missing", "truncated", "altered", "undecodable", "unreadable", "unsafe")
MAX_WHOLE_READ = 256 << 20  # larger objects are read image by image (ranged reads), without the pack index
Task = tuple[str, bool, list[dict[str, Any]]]  # (object key, packed, its manifest rows)


@dataclass
class Problem:
    source_key: str
    object: str
    problem: str  # one of PROBLEMS
    detail: str


@dataclass
class VerifyReport:
    images: int = 0  # ok rows checked
    objects: int = 0  # stored objects they are in
    length_only: int = 0  # rows of an old manifest whose bytes could only be checked for length
    decoded: int = 0  # rows restored and checked (``full``)
    problems: list[Problem] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    worker_restarts: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.orphans

    def counts(self) -> dict[str, int]:
        return {p: sum(x.problem == p for x in self.problems) for p in PROBLEMS}


@dataclass(frozen=True)
class FixityFactory:
    """What a verifying worker holds: the job's codec when decoding (``full``), else None (no
    model is loaded to compare hashes)."""

    codec: CodecFactory | None  # ``full``: the restore's codec factory

    def __call__(self, resources: Resources) -> ItemCodec | None:
        return self.codec(resources) if self.codec is not None else None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_object(
    codec: ItemCodec | None, store: Store, key: str, packed: bool, rows: list[dict[str, Any]]
) -> list[Any]:
    """(problems, rows checked for length only, rows decoded) of one stored object and its rows.
    Nothing is read for a row ``restore`` would refuse (``restore.check_row``: a key that is not
    one of the job's objects, a range that is not plain), nor through a symlink out of the job
    folder, nor past the object's size as the store gives it."""
    problems: list[Problem] = []

    def bad(row: dict[str, Any], kind: str, detail: str) -> None:
        problems.append(Problem(row["source_key"], key, kind, detail))

    safe = []
    for row in rows:
        try:
            check_row(row, windows_local(store))
            safe.append(row)
        except UnsafeKeyError as exc:
            bad(row, "unsafe", str(exc))
    if not safe:
        return [problems, 0, 0]
    try:
        check_inside(store, key)
    except UnsafeKeyError as exc:
        for row in safe:
            bad(row, "unsafe", str(exc))
        return [problems, 0, 0]
    if not store.exists(key):
        for row in safe:
            bad(row, "missing", "the object does not exist")
        return [problems, 0, 0]
    size = store.size(key)
    whole = store.read(key) if size <= MAX_WHOLE_READ else None  # a pack once, for its index too
    index: dict[tuple[int, int], str] = {}
    if packed and whole is not None:
        try:
            index = {(off, n): sha for _, off, n, sha in pack.read_index(whole)}
        except Exception:  # noqa: BLE001 - a damaged index: rows are checked against their own hashes
            index = {}
    if codec is not None:
        use_job_models(store)
    length_only = decoded = 0
    for row in safe:
        offset, length = (row["offset"] if packed else 0), row["length"]
        if length is None:  # an unpacked row of a manifest that did not record it: the object is it
            length = size
        if size < offset + length:
            bad(row, "truncated", f"{size} bytes, the manifest needs {offset + length}")
            continue
        if not packed and size > length:
            bad(row, "altered", f"{size} bytes, the manifest says {length}")
            continue
        blob = whole[offset : offset + length] if whole is not None else store.read_range(key, offset, length)
        expected = row.get("object_sha256") or index.get((offset, length))
        if expected is None and row.get("codec") == "passthrough":
            expected = row.get("source_sha256")
        if expected is None:
            length_only += 1
        elif _sha(blob) != expected:
            bad(row, "altered", "its SHA-256 is not the one written")
            continue
        if codec is not None:
            try:
                codec.restore(blob, row)
                decoded += 1
            except Exception as exc:  # noqa: BLE001 - reported per image, the check goes on
                bad(row, "undecodable", f"{type(exc).__name__}: {exc}"[:500])
    return [problems, length_only, decoded]


def orphans(store: Store, rows: pa.Table) -> list[str]:
    """Stored objects that no manifest row (of any attempt) references."""
    referenced = set(rows["output_key"].to_pylist())
    stored = [k for d in OBJECT_DIRS for k in store.list(d)]
    return [k for k in stored if k not in referenced]


def prune(store: Store, keys: list[str], min_age_s: float) -> list[str]:
    """Delete the orphans last modified more than ``min_age_s`` ago; returns those deleted. An
    object whose age the store cannot tell is kept."""
    now = dt.datetime.now(dt.UTC)
    deleted = []
    for key in keys:
        modified = store.modified(key)
        if modified is not None and (now - modified).total_seconds() > min_age_s:
            store.delete(key)
            deleted.append(key)
    return deleted


def run(
    store: Store,
    codec_factory: CodecFactory | None,
    workers: int | None,
    gpus_per_worker: float = 0.0,
    delete_orphans: bool = False,
    min_age_s: float = 24 * 3600.0,
) -> VerifyReport:
    """Check one job folder (``store``); ``codec_factory`` decodes every image too (``full``)."""
    all_rows = manifest.read_all(store)
    final = manifest.compact(all_rows)
    ok = [r for r in final.to_pylist() if r["status"] == "ok"]
    by_object: dict[tuple[str, bool], list[dict[str, Any]]] = defaultdict(list)
    for row in ok:
        by_object[(row["output_key"], row["offset"] is not None)].append(row)
    report = VerifyReport(images=len(ok), objects=len(by_object))
    tasks: list[Task] = [(key, packed, rows) for (key, packed), rows in sorted(by_object.items())]
    if tasks:
        p = cluster.plan(workers, gpus_per_worker if codec_factory is not None else 0.0)
        resources = Resources(p.device, p.cpus_per_worker)
        factory = FixityFactory(codec_factory)

        def on_done(outcome: pool.Outcome[Task]) -> None:
            key, _, rows = outcome.task
            if outcome.error is not None:
                report.problems += [Problem(r["source_key"], key, "unreadable", outcome.error[:500]) for r in rows]
                return
            problems, length_only, decoded = outcome.result
            report.problems += problems
            report.length_only += length_only
            report.decoded += decoded

        stats = pool.run(
            tasks,
            lambda: cluster.CodecHolder.options(**cluster.actor_options(p)).remote(factory, resources),
            lambda actor, task: actor.run.remote(check_object, store, *task),
            p,
            ATTEMPTS,
            on_done,
            "verify",
            labels=lambda task: {"object": task[0]},
        )
        report.worker_restarts = stats.worker_restarts
    report.problems.sort(key=lambda x: (x.source_key, x.problem))
    report.orphans = orphans(store, all_rows)
    if delete_orphans:
        report.pruned = prune(store, report.orphans, min_age_s)
        pruned = set(report.pruned)
        report.orphans = [k for k in report.orphans if k not in pruned]
    return report
