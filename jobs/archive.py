"""``callic archive``, ``resume``, ``status`` and ``restore``: the pipeline wired to the callic codec.

Exit codes besides the CLI's: 7 storage error, 8 job error (exists, not found, other model),
9 unsafe key refused on restore, 10 the job finished but some images failed (their manifest rows
say why), 11 the Ray cluster cannot host the workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import codec
from codec.errors import CallicError
from jobs.archivecodec import CODECS, ArchiveCodecFactory, CodecSettings
from jobs.imagefiles import IMAGE_SUFFIXES
from pipeline import cluster, driver, events, job, manifest, restore, status
from pipeline.storage import MAX_SOURCE_BYTES, READ_TIMEOUT_S, Store, redact

EXIT_SOME_FAILED = 10
ARCHIVE_SUFFIXES = (*IMAGE_SUFFIXES, ".gif", ".pnm", ".pbm", ".jxl")
DEFAULT_STEPS = 10


class UsageError(CallicError):
    exit_code = 64


def storage_options(text: str | None) -> dict[str, Any]:
    """``--storage-options``: a JSON object, or ``@file.json`` (keeps secrets out of shell history)."""
    if not text:
        return {}
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        value = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--storage-options: not a JSON object or @file: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise UsageError("--storage-options must be a JSON object")
    return value


def _code_version() -> str:
    try:
        return metadata.version("callic")
    except metadata.PackageNotFoundError:
        return "unknown"


def _finish(job_store: Store, summary: driver.RunSummary, quiet: bool) -> int:
    driver.finish(job_store)
    st = status.job_status(job_store)
    if not quiet:
        print(
            f"job {st['job']}: {st['ok']} of {st['images']} images archived, {st['failed']} failed "
            f"({st['failed_retryable']} to retry by resume), {st['pending']} left; "
            f"{st['source_bytes']} -> {st['stored_bytes']} bytes; "
            f"this run {summary.ok + summary.failed} images in {summary.seconds:.1f} s on {summary.workers} worker(s)"
        )
        for err in summary.errors[:20]:
            print(f"  failed: {err}", file=sys.stderr)
        print(f"manifest: {redact(job_store.url)}/manifest.parquet")
    if st["failed"] or st["pending"]:
        return EXIT_SOME_FAILED
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    events.configure(args.log_json, args.verbose)
    options = storage_options(args.storage_options)
    if args.shard_size < 1 or args.steps < 0 or args.max_attempts < 1:
        raise UsageError("--shard-size and --max-attempts must be >= 1, --steps >= 0")
    if args.max_source_bytes < 1 or args.read_timeout <= 0:
        raise UsageError("--max-source-bytes and --read-timeout must be > 0")
    job_id = job.check_job_id(args.job_id or job.new_job_id())
    dst = Store(args.dst, options)
    dst.check_writable()  # before any work: a missing bucket or read-only folder fails here
    job_store = dst.child(job_id)
    if job_store.exists(job.SPEC):
        raise job.JobError(f"job {job_id} exists already in {redact(args.dst)}: use `callic resume`")
    src, items = job.list_sources(args.src, options, ARCHIVE_SUFFIXES)
    if not items:
        raise job.JobError(f"no image files in {redact(args.src)}")
    lossy_model = os.path.abspath(args.lossy_model) if args.lossy_model and "://" not in args.lossy_model else None
    settings = CodecSettings(args.codec, args.steps, args.adapt_patches, args.model, args.batch, args.jpeg,
                             args.quality, lossy_model or args.lossy_model)  # fmt: skip
    model_hash = codec.load_model(args.model).digest.hex()
    if settings.codec == "cca":  # fail before the job exists; workers load the same file and check its hash
        from codec.lossy.api import load_lossy_model

        digest = load_lossy_model(settings.lossy_model, settings.quality).digest.hex()
        settings = dataclasses.replace(settings, lossy_model_hash=digest)
    pack = args.pack if args.pack is not None else not dst.is_local
    spec = job.JobSpec(
        job_id=job_id,
        src=src.url,
        dst=dst.url,
        codec=settings.to_dict(),
        shard_size=args.shard_size,
        pack=pack,
        verify=not args.no_verify,
        max_attempts=args.max_attempts,
        model_hash=model_hash,
        code_version=_code_version(),
        n_images=len(items),
        n_shards=(len(items) + args.shard_size - 1) // args.shard_size,
        max_source_bytes=args.max_source_bytes,
        read_timeout_s=args.read_timeout,
    )
    spec = job.create(job_store, spec, job.shards_table(items, args.shard_size))
    events.emit(
        "job_created",
        job=job_id,
        src=redact(spec.src),
        dst=redact(spec.dst),
        images=spec.n_images,
        shards=spec.n_shards,
        pack=pack,
    )
    if not args.quiet:
        print(f"job {job_id}: {spec.n_images} images in {spec.n_shards} shards -> {redact(job_store.url)}")
    return _run(job_store, spec, src, settings, args)


def _run(job_store: Store, spec: job.JobSpec, src: Store, settings: CodecSettings, args: argparse.Namespace) -> int:
    spec_sources = job.load(job_store)[1]
    tasks = driver.pending_tasks(spec, spec_sources, manifest.read_all(job_store))
    if tasks:
        cluster.connect(args.address)
    summary = driver.run(
        spec,
        src,
        job_store,
        ArchiveCodecFactory(settings),
        tasks,
        args.workers,
        args.gpus_per_worker,
        show_progress=not args.quiet,
    )
    return _finish(job_store, summary, args.quiet)


def cmd_resume(args: argparse.Namespace) -> int:
    events.configure(args.log_json, args.verbose)
    options = storage_options(args.storage_options)
    job_store = Store(args.job, options)
    spec, _ = job.load(job_store)
    settings = CodecSettings(**spec.codec)
    digest = codec.load_model(settings.model).digest.hex()
    if digest != spec.model_hash:
        raise job.JobError(
            f"job {spec.job_id} was archived with model {spec.model_hash[:16]}, this installation has {digest[:16]}"
        )
    job_store.check_writable()
    src = Store(spec.src, options)
    return _run(job_store, spec, src, settings, args)


def cmd_status(args: argparse.Namespace) -> int:
    st = status.job_status(Store(args.job, storage_options(args.storage_options)))
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"job {st['job']} (created {st['created']}, source {redact(st['src'])})")
    print(
        f"  images: {st['images']} in {st['shards']} shards; ok {st['ok']}, failed {st['failed']} "
        f"({st['failed_retryable']} retryable), not done {st['pending']}"
    )
    print(f"  complete: {'yes' if st['complete'] else 'no: run `callic resume`'}")
    if st["source_bytes"]:
        print(
            f"  bytes: {st['source_bytes']} -> {st['stored_bytes']} (saved {st['saved_bytes']}, "
            f"{100 * st['ratio_to_source']:.1f}% of the source); codecs {st['codecs']}"
        )
    if st["images_per_s"]:
        print(f"  throughput: {st['images_per_s']} images/s over the job's runs")
    for err, n in st["errors"].items():
        print(f"  {n} failed with {err}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    events.configure(args.log_json, args.verbose)
    options = storage_options(args.storage_options)
    archive, out = Store(args.archive, options), Store(args.out, options)
    settings = CodecSettings(model=args.model)
    if args.model:
        codec.load_model(args.model)  # a missing or damaged --model fails here, not in every worker
    cluster.connect(args.address)
    s = restore.run(
        archive,
        out,
        ArchiveCodecFactory(settings),
        args.match,
        args.workers,
        args.gpus_per_worker,
        show_progress=not args.quiet,
        overwrite=args.overwrite,
    )
    if not args.quiet:
        print(
            f"restored {s.restored} of {s.images} images from {s.jobs} job(s) to {redact(out.url)} in "
            f"{s.seconds:.1f} s; {s.failed} failed; {s.skipped_failed_rows} recorded as failed at archive time"
        )
        for err in s.errors[:20]:
            print(f"  failed: {err}", file=sys.stderr)
    return EXIT_SOME_FAILED if s.failed else 0


def _common(p: argparse.ArgumentParser, ray_flags: bool = True) -> None:
    p.add_argument("--storage-options", help="fsspec storage options: JSON, or @file.json (credentials, endpoint)")
    if ray_flags:
        p.add_argument(
            "--address", help="Ray cluster to join (e.g. auto, ray://head:10001); default: start a local one"
        )
        p.add_argument("--workers", type=int, help="worker actors (default: one per GPU, else 1)")
        p.add_argument("--gpus-per-worker", type=float, default=1.0, help="GPUs per worker when the cluster has GPUs")
        p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
        p.add_argument("--log-json", action="store_true", help="structured logs: one JSON object per line on stderr")
        p.add_argument("-v", "--verbose", action="store_true", help="log every shard")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("archive", help="compress every image under SRC into a job folder under DST, with a manifest")
    p.add_argument("src", help="folder, fsspec URL (s3://bucket/prefix) or glob (s3://b/photos/**/*.png)")
    p.add_argument("dst", help="folder or fsspec URL; the job goes to DST/JOB")
    p.add_argument("--job-id", help="job name (default: date-time-random)")
    p.add_argument(
        "--codec",
        choices=CODECS,
        default="callic",
        help="callic (learned), auto (learned or JPEG-XL lossless, the smaller), cca (lossy for 8-bit RGB)",
    )
    p.add_argument("--quality", type=int, help="cca: shipped rate point 1..N, higher is better (default N)")
    p.add_argument("--lossy-model", help="cca: a model file instead of a shipped rate point")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"adaptation steps T (default {DEFAULT_STEPS})")
    p.add_argument("--adapt-patches", type=int, default=32, help="most patches per adaptation step (0: all)")
    p.add_argument("--batch", type=int, default=0, help="images adapted together (default: 8 on a GPU, 1 on a CPU)")
    p.add_argument("--model", help="model file; default: the shipped model")
    p.add_argument(
        "--jpeg",
        choices=["passthrough", "jxl"],
        default="passthrough",
        help="JPEGs: stored as they are (default), or transcoded losslessly to JPEG-XL (same bytes restored)",
    )
    p.add_argument("--shard-size", type=int, default=32, help="images per shard (the unit of work and of retries)")
    p.add_argument("--max-attempts", type=int, default=3, help="tries per image before it counts as failed")
    pack = p.add_mutually_exclusive_group()
    pack.add_argument(
        "--pack",
        dest="pack",
        action="store_true",
        default=None,
        help="one packed object per shard (default for object stores)",
    )
    pack.add_argument("--no-pack", dest="pack", action="store_false", help="one object per image (default on disk)")
    p.add_argument("--no-verify", action="store_true", help="skip decoding each file before storing it")
    p.add_argument(
        "--max-source-bytes",
        type=int,
        default=MAX_SOURCE_BYTES,
        help=f"larger sources are failed rows (default {MAX_SOURCE_BYTES}); only regular files are read",
    )
    p.add_argument(
        "--read-timeout",
        type=float,
        default=READ_TIMEOUT_S,
        help=f"seconds per object-store read before its image fails (default {READ_TIMEOUT_S:g})",
    )
    _common(p)
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("resume", help="continue an archive job from its manifest")
    p.add_argument("job", help="the job folder, DST/JOB")
    _common(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="progress, bytes saved and failures of an archive job")
    p.add_argument("job", help="the job folder, DST/JOB")
    p.add_argument("--json", action="store_true")
    _common(p, ray_flags=False)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("restore", help="decode archived images back to their files, hashes verified")
    p.add_argument("archive", help="a DST (all its jobs) or one job folder DST/JOB")
    p.add_argument("out", help="folder or fsspec URL to write the images into, under their original names")
    p.add_argument("--match", help="only source keys matching this glob (e.g. 'cats/*.png')")
    p.add_argument("--model", help="model file, if the one the files name is not installed")
    p.add_argument("--overwrite", action="store_true", help="replace files in OUT that differ (default: refuse them)")
    _common(p)
    p.set_defaults(func=cmd_restore)
