"""``status``: where a job stands, read from its folder alone (spec, sources, shard manifests).

Failures are told apart by what ``resume`` does with them: ``failed_permanent`` (the input
itself: unreadable, truncated, unsupported...; only ``resume --retry-failed`` retries them),
``failed_retryable`` (storage, timeout, lost worker, with attempts left: ``resume`` retries them)
and ``failed_out_of_attempts`` (retryable, but ``max_attempts`` used). Sizes are given per kind
of file in its own unit: lossless files in bits per subpixel, lossy (``cca``: ``codec.registry``) ones in bits per
pixel with their mean PSNR.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from codec.registry import lossy_labels
from pipeline import job, manifest
from pipeline.storage import Store


def job_status(store: Store) -> dict[str, Any]:
    spec, sources = job.load(store)
    rows = manifest.read_all(store)
    final = manifest.compact(rows)
    ok = failed = permanent = retry = 0
    errors: Counter[str] = Counter()
    codecs: Counter[str] = Counter()
    ok_rows = []
    columns = [
        "status",
        "attempt",
        "error",
        "retryable",
        "codec",
        "width",
        "height",
        "raw_bytes",
        "bit_depth",
        "source_bytes",
        "compressed_bytes",
        "psnr",
    ]
    for r in final.select(columns).to_pylist():
        if r["status"] == "ok":
            ok += 1
            codecs[r["codec"]] += 1
            ok_rows.append(r)
            continue
        failed += 1
        errors[(r["error"] or "").split(":", 1)[0]] += 1
        if not manifest.row_retryable(r):
            permanent += 1
        elif (r["attempt"] or 1) < spec.max_attempts:
            retry += 1
    lossy_codecs = lossy_labels()  # what the manifest calls lossy files (``codec.registry``)
    model_bytes = int(spec.corpus.get("model_bytes") or 0) if spec.corpus.get("kept") else 0
    lossless = _sizes([r for r in ok_rows if r["codec"] not in lossy_codecs], lossy=False, model_bytes=model_bytes)
    lossy = _sizes([r for r in ok_rows if r["codec"] in lossy_codecs], lossy=True)
    source_bytes = lossless["source_bytes"] + lossy["source_bytes"]
    stored_bytes = lossless["stored_bytes"] + lossy["stored_bytes"]
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
        "failed_permanent": permanent,  # the input itself: resume skips them unless --retry-failed
        "failed_retryable": retry,  # storage, timeout, lost worker, attempts left: resume retries them
        "failed_out_of_attempts": failed - permanent - retry,  # retryable, max_attempts used
        "pending": spec.n_images - ok - failed,  # never tried, or their shard's attempt did not finish
        "complete": ok + failed == spec.n_images,  # every image has an outcome (failed ones included)
        "attempt_rows": rows.num_rows,
        "source_bytes": source_bytes,
        "stored_bytes": stored_bytes,
        "corpus_model_bytes": model_bytes,  # the job's corpus-adapted model, stored once (0: none)
        "saved_bytes": source_bytes - stored_bytes,
        "ratio_to_source": round(stored_bytes / source_bytes, 4) if source_bytes else None,
        "lossless": lossless,
        "lossy": lossy,
        "codecs": dict(codecs),
        "images_per_s": round(rows.num_rows / span, 4) if span else None,
        "encode_s_total": round(encode_s, 2),
        "errors": dict(errors.most_common(10)),
    }


def _sizes(rows: list[dict[str, Any]], lossy: bool, model_bytes: int = 0) -> dict[str, Any]:
    """Counts and sizes of one kind of stored file. Lossless: bits per subpixel over all its
    samples, and with a corpus model's ``model_bytes`` counted in (it is paid for once, by the
    job's lossless files). Lossy: bits per pixel over all its pixels, and the mean of the images'
    PSNRs (finite ones: an image the codec gave back exactly has an infinite PSNR)."""
    source = sum(r["source_bytes"] or 0 for r in rows)
    stored = sum(r["compressed_bytes"] or 0 for r in rows)
    out: dict[str, Any] = {"images": len(rows), "source_bytes": source, "stored_bytes": stored}
    if lossy:
        pixels = sum((r["width"] or 0) * (r["height"] or 0) for r in rows)
        psnrs = [r["psnr"] for r in rows if r["psnr"] is not None and math.isfinite(r["psnr"])]
        out["bpp"] = round(8 * stored / pixels, 4) if pixels else None
        out["psnr_mean"] = round(sum(psnrs) / len(psnrs), 3) if psnrs else None
    else:
        samples = sum((r["raw_bytes"] or 0) // max(1, (r["bit_depth"] or 8) // 8) for r in rows)
        out["bpsp"] = round(8 * stored / samples, 4) if samples else None
        if model_bytes:
            out["bpsp_with_corpus_model"] = round(8 * (stored + model_bytes) / samples, 4) if samples else None
    return out
