"""``callic verify DST/JOB``: the job's fixity check (``pipeline.verify``), with the restore's codec
when ``--full`` decodes every image too.

Exit codes: 0 only when every stored image is whole (and, with ``--full``, decodes to what its row
says) and there is no orphan; 10 when anything is missing, truncated, altered, undecodable or
orphaned (each named on stderr, or in the ``--json`` report); the CLI's and the archive commands'
codes otherwise (7 storage error, 8 no such job).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from jobs.archive import EXIT_SOME_FAILED, common_arguments, connect_ray, show_progress
from jobs.archivecodec import ArchiveCodecFactory, CodecSettings
from jobs.cli import UsageError, storage_options
from pipeline import events, job, progress, verify
from pipeline.storage import Store, redact


def cmd_verify(args: argparse.Namespace) -> int:
    events.configure(args.log_json, args.verbose)
    if args.min_age_hours < 0:
        raise UsageError("--min-age-hours must be >= 0")
    store = Store(args.job, storage_options(args.storage_options))
    spec, _ = job.load(store)  # a folder that is no job fails here, by name
    factory = ArchiveCodecFactory(CodecSettings(), restoring=True) if args.full else None
    connect_ray(args)
    with progress.phase(f"verifying job {spec.job_id}", show_progress(args) and not args.json):
        report = verify.run(store, factory, args.workers, args.gpus_per_worker, args.prune, args.min_age_hours * 3600)
    if args.json:
        print(json.dumps(_as_json(report, spec.job_id, store), indent=2))
    else:
        _print(report, spec.job_id, store, args)
    return 0 if report.ok else EXIT_SOME_FAILED


def _as_json(report: verify.VerifyReport, job_id: str, store: Store) -> dict[str, Any]:
    return {
        "job": job_id,
        "folder": redact(store.url),
        "ok": report.ok,
        "images": report.images,
        "objects": report.objects,
        "length_only": report.length_only,
        "decoded": report.decoded,
        "counts": report.counts(),
        "problems": [asdict(p) for p in report.problems],
        "orphans": report.orphans,
        "pruned": report.pruned,
        "worker_restarts": report.worker_restarts,
    }


def _print(report: verify.VerifyReport, job_id: str, store: Store, args: argparse.Namespace) -> None:
    for p in report.problems:
        print(f"{p.problem}: {p.source_key} ({p.object}): {p.detail}", file=sys.stderr)
    for key in report.orphans:
        print(f"orphan: {key} (no manifest row references it; --prune deletes it)", file=sys.stderr)
    if args.quiet:
        return
    counts = ", ".join(f"{n} {k}" for k, n in report.counts().items() if n)
    line = (
        f"job {job_id}: {report.images} images in {report.objects} objects checked"
        + (f", {report.decoded} decoded" if args.full else "")
        + (f"; {report.length_only} from old manifests checked for length only" if report.length_only else "")
        + (f"; {len(report.pruned)} orphans deleted" if report.pruned else "")
        + ("; everything holds" if report.ok else f"; PROBLEMS: {counts or 'none'}, {len(report.orphans)} orphans")
    )
    print(line)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("verify", help="check every stored object of a job against its manifest (fixity)")
    p.add_argument("job", help="the job folder, DST/JOB")
    p.add_argument("--full", action="store_true", help="also decode every image and check its pixel hash")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--prune", action="store_true", help="delete orphans (objects no manifest row references)")
    p.add_argument(
        "--min-age-hours",
        type=float,
        default=24.0,
        help="--prune deletes only orphans older than this (an attempt still running has young ones; default 24)",
    )
    common_arguments(p)
    p.set_defaults(func=cmd_verify)
