"""The job manifest: one Parquet row per image and attempt, one immutable file per shard attempt,
and the compacted view (one row per image) that restore and status read.

Why immutable files: a job can be killed at any moment, by any process. A shard's rows are written
in one object after its images are stored, so a manifest file either exists whole or not at all,
and no two writers ever touch the same file. The same image may then appear in several files (a
worker killed after writing its manifest, a shard retried); ``compact`` keeps one row per image:
its latest success, else its latest failure. The compacted ``manifest.parquet`` is derived, so it
can always be rebuilt from ``manifest/``.

Columns (``SCHEMA``):

==================  ============================================================================
job                 job id
shard               shard number (the job's ``sources-<token>.parquet``, named by its
                    ``job.json``, lists each shard's images; ``sources.parquet`` in version-1 jobs)
source_key          the image's path relative to the job's SRC
output_key          where its compressed bytes are, relative to the job folder
offset, length      byte range inside ``output_key`` (a pack); offset is null for one object per image
status              ``ok`` or ``failed``
error               why it failed (type and message), else null
retryable           failed rows: whether another attempt can change the outcome. True for storage
                    errors, read timeouts and lost workers (``resume`` retries them, up to
                    ``max_attempts``); false for the input itself: unreadable, truncated, corrupt
                    or unsupported, over the size limit, not a regular file (only
                    ``resume --retry-failed`` retries them). Null for ok rows. Rows written before
                    this column existed get it from their error's exception type (``retryable``)
codec               ``callic`` (learned), ``jxl-lossless`` / ``zlib`` (classical coders in a
                    ``.cllc``), ``cca`` (lossy), ``jpeg-jxl`` (a JPEG transcoded losslessly),
                    ``passthrough`` (the original bytes, e.g. a JPEG)
format              the source file's format (PNG, TIFF, JPEG...), restored as such
width, height       pixels
mode                Pillow mode (``RGB``, ``L``, ``RGB;16``...)
bit_depth           bits per sample
raw_bytes           uncompressed pixel bytes (width x height x channels x bytes per sample)
source_bytes        size of the source file
compressed_bytes    size of what is stored (``length``)
bpsp                lossless rows: 8 x compressed_bytes / (width x height x channels), bits per
                    subpixel; null for lossy rows
bpp                 lossy (``cca``) rows: 8 x compressed_bytes / (width x height), bits per pixel
psnr                lossy rows: PSNR in dB of the stored reconstruction against the source pixels
                    (peak 255; inf when they are equal)
encode_s, verify_s  seconds spent encoding and verifying this image
codec_facts         what only the row's codec knows, as a map of strings the codec fills
                    (``EncodeReport.manifest_facts``), empty for files no model coded. The
                    learned coder: ``model_hash`` (SHA-256 of the model file, hex), ``steps``
                    (per-image fine-tuning steps, absent: none) and ``adapter_bytes`` (the kept
                    adapter section, absent: none); ``cca``: ``model_hash`` (the lossy model).
                    A new codec adds its own keys without a change here. Manifests
                    written before this column existed had ``steps``, ``adapter_bytes`` and
                    ``model_hash`` columns: they load folded into it (``from_bytes``)
pixel_hash          the hash the ``.cllc`` HEAD stores (hex): for format version 2 files the image
                    hash of ``codec.raster.raster_hash`` (pixels, mode, palette, transparency and
                    metadata), for version 1 files of the pixels alone; for lossy rows that of the
                    reconstruction; null for passthrough and jpeg-jxl
source_sha256       SHA-256 of the source file's bytes
object_sha256       SHA-256 of the stored bytes (the row's range in a pack), what ``callic
                    verify`` checks; null for failed rows and in manifests written before it existed
worker              host:pid/Ray node id (first 8 hex digits) of the worker
gpu                 the Ray GPU id(s) of the worker, null on CPU
attempt             1 for the first try of this image, 2 for its first retry...
time                when the row was written (UTC)
==================  ============================================================================
"""

from __future__ import annotations

import io
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.storage import Store

SCHEMA = pa.schema(
    [
        ("job", pa.string()),
        ("shard", pa.int32()),
        ("source_key", pa.string()),
        ("output_key", pa.string()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("retryable", pa.bool_()),
        ("codec", pa.string()),
        ("format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("mode", pa.string()),
        ("bit_depth", pa.int16()),
        ("raw_bytes", pa.int64()),
        ("source_bytes", pa.int64()),
        ("compressed_bytes", pa.int64()),
        ("bpsp", pa.float64()),
        ("bpp", pa.float64()),
        ("psnr", pa.float64()),
        ("encode_s", pa.float64()),
        ("verify_s", pa.float64()),
        ("codec_facts", pa.map_(pa.string(), pa.string())),
        ("pixel_hash", pa.string()),
        ("source_sha256", pa.string()),
        ("object_sha256", pa.string()),
        ("worker", pa.string()),
        ("gpu", pa.string()),
        ("attempt", pa.int16()),
        ("time", pa.timestamp("ms", tz="UTC")),
    ]
)
COLUMNS = tuple(SCHEMA.names)
# Why the common columns stop at bpp and psnr: sizes, rates, distortion, hashes and times are what
# every codec has and what ``status`` sums; anything else a codec knows goes in ``codec_facts``.
LEGACY_FACTS = ("steps", "adapter_bytes", "model_hash")  # columns before ``codec_facts``, folded into it
SHARD_DIR = "manifest"
COMPACTED = "manifest.parquet"


# Exception types (by name, so that old manifests' error texts classify the same way) of failures
# that no retry can change: the source itself is unreadable, damaged, unsupported or refused.
PERMANENT_ERRORS = (
    "ImageReadError",
    "InexactReadError",
    "UnidentifiedImageError",
    "DecompressionBombError",
    "CorruptFileError",
    "UnsupportedError",
)
# ``SourceError`` is both: a refused source (too large, not a regular file) is permanent, an
# object-store read that timed out is not.
_TIMEOUT = "no answer within"
_PERMANENT_TEXT = rf"^(?:{'|'.join(PERMANENT_ERRORS)}):"


def retryable(error: str | BaseException | None) -> bool:
    """Whether a failure (an exception, or a row's error text, ``"Type: message"``) may go away on
    another attempt. Only the input's own faults are permanent; anything else (storage errors,
    timeouts, lost workers, "gave up after N attempts", errors we do not know) is retried, as
    every failure was before failures were told apart."""
    if isinstance(error, BaseException):
        names = {cls.__name__ for cls in type(error).__mro__}
        if "SourceError" in names:
            return _TIMEOUT in str(error)
        return not names & set(PERMANENT_ERRORS)
    text = error or ""
    if text.startswith("SourceError:"):
        return _TIMEOUT in text
    return re.match(_PERMANENT_TEXT, text) is None


def row_retryable(row: dict[str, Any]) -> bool:
    """A failed row's ``retryable``, derived from its error text where it is null."""
    value = row.get("retryable")
    return retryable(row.get("error")) if value is None else bool(value)


def facts(row: dict[str, Any]) -> dict[str, str]:
    """A row's ``codec_facts`` as a dict, however it was read (pyarrow's ``to_pylist`` gives a
    map as a list of pairs; null is no facts)."""
    value = row.get("codec_facts")
    return dict(value) if value else {}


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts of ``COLUMNS``; any other key is a mistake, refused) as a table of ``SCHEMA``,
    their ``codec_facts`` values as strings."""
    unknown = {k for row in rows for k in row} - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown manifest columns: {sorted(unknown)}")
    records = [{c: row.get(c) for c in COLUMNS} for row in rows]
    for record in records:
        record["codec_facts"] = {str(k): str(v) for k, v in facts(record).items()}
    return pa.Table.from_pylist(records, schema=SCHEMA)


def to_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def from_bytes(data: bytes) -> pa.Table:
    """A manifest file as a table of ``SCHEMA``. Files written before a column existed load with
    it null, except ``retryable`` of their failed rows, derived from the error text, and
    ``codec_facts``, made from the ``LEGACY_FACTS`` columns; columns this version does not know
    are dropped."""
    table = pq.read_table(io.BytesIO(data))
    n = table.num_rows
    columns = [table[c] if c in table.column_names else pa.nulls(n, SCHEMA.field(c).type) for c in COLUMNS]
    if "codec_facts" not in table.column_names:
        columns[COLUMNS.index("codec_facts")] = _legacy_facts(table)
    table = pa.Table.from_arrays(columns, names=list(COLUMNS)).cast(SCHEMA)
    return _fill_retryable(table)


def _legacy_facts(table: pa.Table) -> pa.Array:
    """``codec_facts`` of a manifest written before it existed: its ``LEGACY_FACTS`` columns'
    values, as strings, where not null (a passed-through file's ``steps`` 0 included: the file
    said so)."""
    present = [c for c in LEGACY_FACTS if c in table.column_names]
    values = {c: table[c].to_pylist() for c in present}
    maps = [{c: str(values[c][i]) for c in present if values[c][i] is not None} for i in range(table.num_rows)]
    return pa.array(maps, type=SCHEMA.field("codec_facts").type)


def _fill_retryable(table: pa.Table) -> pa.Table:
    """Classify failed rows that have no ``retryable`` yet, from their error text (vectorized: a
    manifest may hold millions of rows)."""
    column = table["retryable"]
    unset = pc.and_(pc.not_equal(table["status"], "ok"), pc.is_null(column))
    if not pc.any(unset).as_py():
        return table
    error = table["error"]
    refused = pc.and_(pc.starts_with(error, "SourceError:"), pc.invert(pc.match_substring(error, _TIMEOUT)))
    permanent = pc.fill_null(pc.or_(pc.match_substring_regex(error, _PERMANENT_TEXT), refused), False)
    filled = pc.if_else(unset, pc.invert(permanent), column)
    return table.set_column(table.schema.get_field_index("retryable"), "retryable", filled)


def write_shard(job: Store, shard: int, token: str, rows: list[dict[str, Any]]) -> str:
    """Write one shard attempt's rows as a new immutable file; returns its key."""
    key = f"{SHARD_DIR}/shard-{shard:06d}-{token}.parquet"
    job.write_once(key, to_bytes(to_table(rows)))
    return key


def read_all(job: Store) -> pa.Table:
    """Every row of every shard attempt written so far (duplicates included)."""
    keys = [k for k in job.list(SHARD_DIR) if k.endswith(".parquet")]
    tables = [from_bytes(job.read(k)) for k in keys]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def compact(rows: pa.Table) -> pa.Table:
    """One row per source key: its latest ``ok`` row, else its latest failure; sorted by key."""
    if rows.num_rows == 0:
        return rows
    failed = pc.cast(pc.not_equal(rows["status"], "ok"), pa.int8())
    ranked = rows.append_column("_failed", failed).sort_by(
        [("source_key", "ascending"), ("_failed", "ascending"), ("time", "descending"), ("attempt", "descending")]
    )
    keys = ranked["source_key"].to_pylist()
    first = [i for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    return ranked.take(pa.array(first)).drop_columns(["_failed"])


def write_compacted(job: Store, table: pa.Table) -> None:
    job.write(COMPACTED, to_bytes(table))


def load(job: Store) -> pa.Table:
    """The job's compacted manifest, rebuilt from the shard files (the stored copy may be stale
    if a run was killed after writing more shard files)."""
    return compact(read_all(job))
