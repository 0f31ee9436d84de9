"""A job's folder under DST: its settings and its frozen list of sources.

``DST/JOB/job.json`` holds every setting (codec settings, model hash, code version, SRC, shard
size...) and ``DST/JOB/sources-<token>.parquet`` (named by ``job.json``; ``sources.parquet`` in
jobs of spec version 1) the images in shards, listed once when the job starts. Freezing the
listing makes shards stable: a resume processes exactly the images the job started with, even if
SRC changed since, and needs nothing but DST. ``DST/JOB/models/<sha256>.safetensors`` are the
job's own copies of every model it codes with (written at creation since 2026-12-03): a job
folder restores on a machine whose installation has none of them.

Creating a job is atomic: the sources list goes under a name of its own first, then ``job.json``
is written once (``Store.write_once``: a hard link or a conditional put). Of many processes
creating one job, exactly one wins; the others remove their own sources file and change nothing
the winner wrote. A folder with ``job.json`` is a complete job. Credentials are never written
here: SRC and DST are stored without user:password parts or secret query parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import posixpath
import re
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from codec.errors import CallicError
from codec.modelfiles import MAX_MODEL_BYTES
from pipeline.storage import (
    MAX_SOURCE_BYTES,
    READ_TIMEOUT_S,
    ExistsError,
    StorageError,
    Store,
    redact,
    strip_credentials,
)

SPEC = "job.json"
SOURCES = "sources.parquet"  # the sources list of version-1 jobs
SOURCES_NAME = re.compile(r"^sources(-[0-9a-f]{1,32})?\.parquet$")
MODELS_DIR = "models"  # the job's own copies of its models, by SHA-256 (``create``)
SPEC_VERSION = 2  # 2: the sources list is named in the spec (``sources``)
READ_VERSIONS = (1, 2)
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
GLOB_CHARS = "*?["


class JobError(CallicError):
    """A job cannot be created or resumed as asked (exists already, not found, wrong settings)."""

    exit_code = 8


@dataclass
class JobSpec:
    job_id: str
    src: str
    dst: str
    # Opaque to the pipeline: what the codec factory needs (codec name, steps, ...).
    codec: dict[str, Any]
    shard_size: int
    pack: bool
    verify: bool
    max_attempts: int
    model_hash: str  # the learned model's SHA-256 (hex); ``models`` has it too, where it exists
    code_version: str
    n_images: int = 0
    n_shards: int = 0
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    version: int = SPEC_VERSION
    sources: str = SOURCES  # the file under the job folder listing the sources
    max_source_bytes: int = MAX_SOURCE_BYTES  # larger sources are failed rows
    read_timeout_s: float = READ_TIMEOUT_S  # per object-store read attempt
    # The codec's fingerprint (``codec.registry.Encoder``): every model it codes with, by SHA-256;
    # workers and ``resume`` refuse others. Empty in specs written before it existed.
    models: dict[str, str] = field(default_factory=dict)
    # The .cllc format version the job writes (``codec.container.FORMAT_VERSION``); 0 in specs
    # written before it was recorded (they wrote version 2, or 1 before 2026-12-02).
    format_version: int = 0
    # Corpus adaptation (``callic archive --adapt-corpus``): its outcome, kept or not (``kept``,
    # ``model_hash``, ``model_bytes``, ``sample``, ``steps``, ``seconds``, estimated bits saved on
    # the sample); empty when the job was not adapted. A kept model is in ``models`` as ``model``
    # (its base as ``base_model``) and in the job folder like every model.
    corpus: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Whoever builds a spec, what is stored and printed from it carries no credentials.
        self.src, self.dst = strip_credentials(self.src), strip_credentials(self.dst)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> JobSpec:
        raw = json.loads(data)
        if raw.get("version") not in READ_VERSIONS:
            raise JobError(f"job spec version {raw.get('version')} is not supported (this reads {READ_VERSIONS})")
        spec = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        if not isinstance(spec.sources, str) or not SOURCES_NAME.match(spec.sources):
            raise JobError(f"job {spec.job_id}: {SPEC} names {spec.sources!r} as its sources list")
        if not isinstance(spec.models, dict) or not all(isinstance(v, str) for v in spec.models.values()):
            raise JobError(f"job {spec.job_id}: {SPEC} has models {spec.models!r}: not a map of names to hashes")
        if not isinstance(spec.corpus, dict):
            raise JobError(f"job {spec.job_id}: {SPEC} has corpus {spec.corpus!r}: not a map")
        limits = (spec.max_source_bytes, spec.read_timeout_s)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in limits):
            raise JobError(f"job {spec.job_id}: {SPEC} has source limits {limits}: they must be positive numbers")
        return spec


def new_job_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def check_job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise JobError(f"job id {job_id!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    return job_id


def split_glob(src: str) -> tuple[str, str | None]:
    """``s3://b/photos/*/x*.png`` -> (``s3://b/photos``, ``*/x*.png``): the folder the job's
    relative keys start from, and the pattern under it (None when SRC is a plain folder)."""
    parts = src.rstrip("/").split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in GLOB_CHARS):
            return "/".join(parts[:i]), "/".join(parts[i:])
    return src.rstrip("/"), None


def list_sources(src: str, options: dict[str, Any], suffixes: tuple[str, ...]) -> tuple[Store, list[tuple[str, int]]]:
    """The store SRC's keys are relative to, and the sorted (key, size) of its image files.
    A folder is listed recursively, keeping files with an image suffix; a glob keeps what matches
    (fsspec's glob: ``**`` crosses folders)."""
    base, pattern = split_glob(src)
    store = Store(base, options)
    root = store.root.rstrip("/") + "/"
    fs = store.fs
    if pattern is None:
        if fs.isfile(store.root):
            raise JobError(f"SRC {redact(src)} is a file: give its folder or a glob")
        if not fs.isdir(store.root):
            raise JobError(f"SRC {redact(src)} does not exist or is not a folder")
        found = fs.find(store.root, detail=True)
        keep = {p: info for p, info in found.items() if p.lower().endswith(suffixes)}
    else:
        keep = fs.glob(root + pattern, detail=True) if fs.isdir(store.root) else {}
        keep = {p: info for p, info in keep.items() if info.get("type") != "directory"}
    items = sorted((p[len(root) :], int(info.get("size") or 0)) for p, info in keep.items() if p.startswith(root))
    return store, items


def shards_table(items: list[tuple[str, int]], shard_size: int) -> pa.Table:
    return pa.table(
        {
            "shard": pa.array([i // shard_size for i in range(len(items))], pa.int32()),
            "source_key": pa.array([k for k, _ in items], pa.string()),
            "source_bytes": pa.array([s for _, s in items], pa.int64()),
        }
    )


def model_key(digest: bytes) -> str:
    """Where a job folder keeps its copy of the model with SHA-256 ``digest``."""
    return f"{MODELS_DIR}/{digest.hex()}.safetensors"


def create(job: Store, spec: JobSpec, sources: pa.Table, models: dict[bytes, bytes] | None = None) -> JobSpec:
    """Write the job folder and return the spec as written (naming its sources file); refuses a
    job id that exists already, also when another process creates it at the same moment: then
    this call removes only what it wrote itself and raises ``JobError``.

    ``models`` (SHA-256 -> bytes) are the model files the job codes with: copied into the folder
    (``model_key``) before ``job.json``, so that a job folder restores where no installation
    ships its models any more (``model_source``)."""
    exists = JobError(f"job {spec.job_id} exists already in {redact(spec.dst)}: use `callic resume`")
    if job.exists(SPEC):
        raise exists
    spec = dataclasses.replace(spec, sources=f"sources-{uuid.uuid4().hex[:16]}.parquet", version=SPEC_VERSION)
    written = copy_models(job, models or {})
    buf = io.BytesIO()
    pq.write_table(sources, buf)
    job.write_once(spec.sources, buf.getvalue())
    written.append(spec.sources)
    try:
        job.write_once(SPEC, spec.to_json())
    except ExistsError:
        for key in written:
            with contextlib.suppress(StorageError):  # left behind, it is unreferenced and harmless
                job.delete(key)
        raise exists from None
    return spec


def copy_models(job: Store, models: dict[bytes, bytes]) -> list[str]:
    """Put a copy of each model (SHA-256 -> bytes) in the job folder where it has none yet;
    returns the keys written."""
    written = []
    for digest, data in models.items():
        if hashlib.sha256(data).digest() != digest:
            raise ValueError(f"model bytes do not hash to {digest.hex()[:16]}")
        key = model_key(digest)
        if job.exists(key):
            continue
        with contextlib.suppress(ExistsError):  # another process's copy: the same bytes, by name
            job.write_once(key, data)
            written.append(key)
    return written


def model_source(job: Store) -> Callable[[bytes], tuple[str, bytes] | None]:
    """A ``codec.modelfiles`` source of the models ``job``'s folder holds: the copy named by the
    digest, read with the model size limit (``find_by_hash`` checks its hash); None where the job
    has none (jobs made before models were copied, or a copy deleted)."""

    def read(digest: bytes) -> tuple[str, bytes] | None:
        key = model_key(digest)
        try:
            return job.name(key), job.read_source(key, MAX_MODEL_BYTES, READ_TIMEOUT_S)
        except (FileNotFoundError, StorageError):
            return None

    return read


def load(job: Store) -> tuple[JobSpec, pa.Table]:
    try:
        spec = JobSpec.from_json(job.read(SPEC))
    except FileNotFoundError:
        raise JobError(f"{redact(job.url)} is not a job folder (no {SPEC})") from None
    sources = pq.read_table(io.BytesIO(job.read(spec.sources)))
    if sources.num_rows != spec.n_images:
        raise JobError(
            f"{redact(job.url)}: {spec.sources} lists {sources.num_rows} images, {SPEC} says {spec.n_images}"
        )
    return spec, sources


def find_jobs(archive: Store) -> list[str]:
    """The job ids in ``archive`` (a DST), or [""] when ``archive`` is itself a job folder."""
    if archive.exists(SPEC):
        return [""]
    return [name for name in archive.folders() if archive.exists(posixpath.join(name, SPEC))]
