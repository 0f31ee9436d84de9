"""``status``: where a job stands, read from its folder alone (spec, sources, shard manifests)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipeline import job, manifest
from pipeline.storage import Store


def job_status(store: Store) -> dict[str, Any]:
    spec, sources = job.load(store)
    rows = manifest.read_all(store)
    final = manifest.compact(rows)
    ok = failed = failed_retry = 0
    source_bytes = stored_bytes = 0
    errors: Counter[str] = Counter()
    codecs: Counter[str] = Counter()
    for r in final.select(["status", "attempt", "source_bytes", "compressed_bytes", "error", "codec"]).to_pylist():
        if r["status"] == "ok":
            ok += 1
            codecs[r["codec"]] += 1
            source_bytes += r["source_bytes"] or 0
            stored_bytes += r["compressed_bytes"] or 0
        else:
            failed += 1
            if (r["attempt"] or 1) < spec.max_attempts:
                failed_retry += 1
            errors[(r["error"] or "").split(":", 1)[0]] += 1
    times = rows["time"].to_pylist() if rows.num_rows else []
    span = (max(times) - min(times)).total_seconds() if len(times) > 1 else 0.0
    encode_s = sum(v for v in rows["encode_s"].to_pylist() if v) if rows.num_rows else 0.0
    return {
        "job": spec.job_id,
        "src": spec.src,
        "created": spec.created,
        "images": spec.n_images,
        "shards": spec.n_shards,
        "ok": ok,
        "failed": failed,  # latest attempt failed
        "failed_retryable": failed_retry,  # of those, tried fewer than max_attempts times: resume retries them
        "pending": spec.n_images - ok - failed,  # never tried, or their shard's attempt did not finish
        "complete": ok + failed == spec.n_images,
        "attempt_rows": rows.num_rows,
        "source_bytes": source_bytes,
        "stored_bytes": stored_bytes,
        "saved_bytes": source_bytes - stored_bytes,
        "ratio_to_source": round(stored_bytes / source_bytes, 4) if source_bytes else None,
        "codecs": dict(codecs),
        "images_per_s": round(rows.num_rows / span, 4) if span else None,
        "encode_s_total": round(encode_s, 2),
        "errors": dict(errors.most_common(10)),
    }
