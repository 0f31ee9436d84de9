"""Restoring archived images: manifest rows -> stored bytes (one ranged read each) -> the codec's
restore (which checks hashes) -> the file under OUT, at its original relative name.

A manifest is storage someone else may control, so nothing in a row is trusted:

- its output name is checked to stay inside OUT (``safe_key``): absolute names, ``..``, empty or
  ``.`` components and NULs are refused. Backslashes and colons are ordinary characters in a POSIX
  file name or an object key, so such names (legal on Linux, archived ``ok``) restore as they are;
  only when writing to a local disk on Windows, where they would name another folder or drive,
  are they refused.
- the object it points at must be one the shard writer makes, inside that job's folder
  (``objects/<shard>-<token>/<name>`` or ``data/shard-<shard>-<token>.pack``), with a plain range
  (``check_row``); on a local disk, one no symlink leads out of. Anything else is a failed row,
  and nothing is read.

Writing never replaces a file in OUT with other content unless asked (``overwrite``), and never
goes through a symlink inside OUT: on a local disk each folder under OUT is opened with
``O_NOFOLLOW`` relative to its parent, and a file appears whole or not at all (written to a
temporary name in its folder, then hard-linked, which fails if the name exists, or with
``overwrite`` renamed over it). A file already holding exactly the restored bytes counts as
restored, so running a restore again, or retrying a chunk whose worker died, is harmless.

Chunks run on Ray actors through ``pipeline.pool``: a worker that dies is replaced and its chunk
retried image by image (so one image that kills its worker fails alone); after ``ATTEMPTS``
tries an image is a failed row with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import re
import stat
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from codec import modelfiles
from codec.errors import CallicError
from pipeline import cluster, events, job, manifest, pool
from pipeline.items import CodecFactory, ItemCodec, Resources
from pipeline.progress import ProgressBar
from pipeline.storage import Store, redact

CHUNK = 16
ATTEMPTS = 3  # tries per chunk before its images are failed rows
MAX_OBJECT_BYTES = 1 << 34  # no single stored image is anywhere near 16 GiB
_TOKEN = r"[0-9a-f]{1,32}"
_OBJECT = re.compile(rf"objects/\d{{6,}}-{_TOKEN}/(?P<name>.+)", re.DOTALL)
_PACK = re.compile(rf"data/shard-\d{{6,}}-{_TOKEN}\.pack")
_FIELD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


class UnsafeKeyError(CallicError):
    """A key that would be written outside the restore folder, or read outside the job."""

    exit_code = 9


class OutputExistsError(CallicError):
    """The restore would replace a different file already in OUT (``--overwrite`` allows it)."""

    exit_code = 10


def safe_key(key: str, portable: bool = True) -> str:
    """``key`` if it names a file strictly inside the output folder; raises otherwise. With
    ``portable``, also refuses what would escape on Windows: backslashes and colons (drives)."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\0" in key
        or any(p in ("", ".", "..") for p in parts)
        or (portable and ("\\" in key or ":" in key))
    ):
        raise UnsafeKeyError(f"refused: key {key!r} would escape the output folder")
    return key


def windows_local(store: Store) -> bool:
    """Whether names in ``store`` are Windows paths, where ``\\`` and ``:`` are separators."""
    return os.name == "nt" and store.is_local


def check_row(row: dict[str, Any], portable: bool) -> None:
    """Refuse a row whose object is not one of its job's stored objects, or whose range or codec
    fields are not plain: a crafted row must never make restore read anything else."""
    key, offset, length = row.get("output_key"), row.get("offset"), row.get("length")
    if not isinstance(key, str):
        raise UnsafeKeyError("refused: the row names no stored object")
    whole, packed = _OBJECT.fullmatch(key), _PACK.fullmatch(key) is not None
    if whole:
        safe_key(whole["name"], portable)
    if not ((whole and offset is None) or (packed and _is_size(offset))):
        raise UnsafeKeyError(f"refused: {key!r} (offset {offset!r}) is not an object of this job")
    if not ((whole and length is None) or _is_size(length)):
        raise UnsafeKeyError(f"refused: {key!r}: length {length!r} is not a size")
    for name, may_be_empty in (("codec", False), ("format", True)):  # a passthrough's format may be unknown
        value = row.get(name)
        if not ((isinstance(value, str) and _FIELD.fullmatch(value)) or (may_be_empty and not value)):
            raise UnsafeKeyError(f"refused: {key!r}: {name} {value!r} is not a plain name")


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_OBJECT_BYTES


def check_inside(store: Store, key: str) -> None:
    """``UnsafeKeyError`` if ``key``, on a local disk, resolves out of the job folder (a symlink)."""
    if store.is_local:
        root = os.path.realpath(store.root)
        if not os.path.realpath(store.path(key)).startswith(root + os.sep):
            raise UnsafeKeyError(f"refused: {key!r} leads out of the job folder (a symlink)")


def read_object(store: Store, row: dict[str, Any]) -> bytes:
    """The stored bytes of a checked row: a ranged read in a pack, else the whole object."""
    key = row["output_key"]
    check_inside(store, key)
    if row["offset"] is not None:
        return store.read_range(key, row["offset"], row["length"])
    blob = store.read(key)
    if row["length"] is not None and len(blob) != row["length"]:
        raise CallicError(f"{key}: {len(blob)} bytes stored, the manifest says {row['length']}")
    return blob


@dataclass(frozen=True)
class OutputPolicy:
    """How files land in OUT: replace different files or not; ``run`` names this run's temporaries."""

    overwrite: bool
    run: str


def place(out: Store, key: str, data: bytes, policy: OutputPolicy) -> int:
    """Write ``data`` as ``key`` under OUT; returns the bytes written (0: it was there already)."""
    if out.is_local:
        return _place_local(out.root, key, data, policy)
    if out.exists(key):
        if out.read(key) == data:
            return 0
        if not policy.overwrite:
            raise OutputExistsError(f"{key} exists in OUT with other content (--overwrite replaces it)")
        out.write(key, data)
    else:
        out.write_once(key, data)
    return len(data)


def _place_local(root: str, key: str, data: bytes, policy: OutputPolicy) -> int:
    parts = key.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)  # OUT itself may be a symlink: the user named it
    try:
        for i, part in enumerate(parts[:-1]):
            child = _enter(fd, part, "/".join(parts[: i + 1]))
            os.close(fd)
            fd = child
        return _put_file(fd, parts[-1], key, data, policy)
    finally:
        os.close(fd)


def _enter(parent: int, name: str, shown: str) -> int:
    """The folder ``name`` in ``parent`` (made if missing), opened without following a symlink."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, dir_fd=parent)
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeKeyError(f"refused: {shown} in OUT is a symlink or not a folder") from None
        raise


def _put_file(folder: int, name: str, key: str, data: bytes, policy: OutputPolicy) -> int:
    if _same_file_there(folder, name, key, data, policy.overwrite):
        return 0
    tmp = f".callic-restore-{policy.run}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.tmp"
    with contextlib.suppress(FileNotFoundError):  # left by an attempt of this run whose worker died
        os.unlink(tmp, dir_fd=folder)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if policy.overwrite:
            os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)  # replaces a file, never writes through
        else:
            _link_new(folder, tmp, name, key)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder)
    return len(data)


def _link_new(folder: int, tmp: str, name: str, key: str) -> None:
    """Give ``tmp`` the name ``name`` only if no file has it (a hard link never replaces one)."""
    try:
        os.link(tmp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
    except FileExistsError:
        raise OutputExistsError(f"{key} appeared in OUT while it was restored") from None
    except OSError as exc:  # a file system without hard links (FAT, some network shares)
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        if _exists(folder, name):
            raise OutputExistsError(f"{key} appeared in OUT while it was restored") from None
        os.rename(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)


def _exists(folder: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _same_file_there(folder: int, name: str, key: str, data: bytes, overwrite: bool) -> bool:
    """Whether ``name`` already holds ``data``; raises if something else is there that must stay."""
    try:  # O_NONBLOCK: a FIFO put there must not hang the restore
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeKeyError(f"refused: {key} in OUT is a symlink") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OutputExistsError(f"{key} in OUT is not a file")
        if st.st_size == len(data) and f.read() == data:
            return True
    if not overwrite:
        raise OutputExistsError(f"{key} exists in OUT with other content (--overwrite replaces it)")
    return False


@dataclass
class RestoreSummary:
    jobs: int = 0
    images: int = 0
    restored: int = 0
    failed: int = 0
    skipped_failed_rows: int = 0  # images the archive itself records as failed
    bytes_written: int = 0
    seconds: float = 0.0
    worker_restarts: int = 0
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
            key = row["source_key"] if isinstance(row["source_key"], str) else ""  # "": refused as unsafe
            if match and not fnmatch.fnmatchcase(key, match):
                continue
            if row["status"] != "ok":
                skipped += 1
                continue
            # One job folder restores to OUT/key; a DST of jobs to OUT/JOB/key (jobs may share keys).
            out_key = f"{job_id}/{key}" if job_id else key
            todo.append((store, out_key, row))
    return todo, len(ids), skipped


_JOBS_WITH_SOURCES: set[str] = set()  # job folders whose models this process may fall back on


def use_job_models(store: Store) -> None:
    """Let this process find the models a job folder holds copies of (``job.model_source``),
    after the installed ones: a file names its model by hash, and an installed copy of the same
    hash is used first."""
    if store.url not in _JOBS_WITH_SOURCES:
        modelfiles.add_source(job.model_source(store))
        _JOBS_WITH_SOURCES.add(store.url)


def restore_rows(
    codec: ItemCodec,
    out: Store,
    items: list[tuple[Store, str, dict[str, Any]]],
    policy: OutputPolicy,
    progress: Any = None,
) -> list[tuple[str, str | None, int]]:
    """Restore each item; returns (output key, error or None, bytes written) per item. Each item
    is also counted on ``progress`` (a ``cluster.Progress`` actor) as it ends, so that the
    driver's bar moves per image, not per chunk."""
    results = []
    portable = windows_local(out)
    for store, out_key, row in items:
        use_job_models(store)
        try:
            safe_key(out_key, portable)
            check_row(row, windows_local(store))
            data = codec.restore(read_object(store, row), row)
            results.append((out_key, None, place(out, out_key, data, policy)))
        except Exception as exc:
            results.append((out_key, f"{type(exc).__name__}: {exc}"[:2000], 0))
        if progress is not None:
            progress.add.remote(results[-1][1] is None)
    return results


def run(
    archive: Store,
    out: Store,
    factory: CodecFactory,
    match: str | None,
    workers: int | None,
    gpus_per_worker: float,
    show_progress: bool = True,
    overwrite: bool = False,
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
    resources = Resources(p.device, p.cpus_per_worker)
    policy = OutputPolicy(overwrite, uuid.uuid4().hex[:12])
    events.emit("restore_run", archive=redact(archive.url), out=redact(out.url), images=len(todo), workers=p.workers)
    starting = f"restore: starting {min(p.workers, len(chunks))} worker(s)"
    bar = ProgressBar(len(todo), enabled=show_progress, desc=starting)  # they load the model as they start
    progress = cluster.ProgressCounts()

    def tick() -> None:
        bar.update(*progress.counts((summary.restored, summary.failed)))

    def new_actor() -> Any:
        return cluster.CodecHolder.options(**cluster.actor_options(p)).remote(factory, resources)

    def on_done(outcome: pool.Outcome) -> None:
        failed = [(key, outcome.error, 0) for _, key, _ in outcome.task]
        results = outcome.result if outcome.error is None else failed
        for key, error, nbytes in results:
            if error is None:
                summary.restored += 1
                summary.bytes_written += nbytes
            else:
                summary.failed += 1
                summary.errors.append(f"{key}: {error}")
                events.emit("restore_failed", level=30, key=key, error=error)

    try:
        stats = pool.run(
            chunks,
            new_actor,
            lambda actor, chunk: actor.run.remote(restore_rows, out, chunk, policy, progress.actor),
            p,
            ATTEMPTS,
            on_done,
            "restore",
            split=lambda chunk: [[item] for item in chunk],  # after a lost worker, image by image
            tick=tick,
            on_started=lambda: bar.describe("restore"),
        )
        bar.update(summary.restored, summary.failed)  # the exact counts (live ones may lag or count retries)
    finally:
        bar.close()
        ray.kill(progress.actor)
    summary.worker_restarts = stats.worker_restarts
    summary.seconds = time.perf_counter() - start
    return summary
