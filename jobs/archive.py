"""``callic archive``, ``resume``, ``status`` and ``restore``: the pipeline wired to the callic codec.

Exit codes besides the CLI's: 7 storage error, 8 job error (exists, not found, other model),
9 unsafe key refused on restore, 10 the job finished but some images failed (their manifest rows
say why), 11 the Ray cluster cannot host the workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from importlib import metadata
from typing import Any

import codec
from codec import modelfiles, registry
from codec.container import FORMAT_VERSION
from codec.defaults import DEFAULT_CORPUS_SAMPLE, DEFAULT_CORPUS_STEPS, DEFAULT_JXL_EFFORT
from codec.errors import CallicError
from jobs import corpusjob
from jobs.adaptargs import add_coding_arguments, coding_fields
from jobs.archivecodec import DEFAULT_CODEC, ArchiveCodecFactory, CodecSettings, check_pinned, open_encoder
from jobs.cli import STORAGE_OPTIONS_HELP, UsageError, storage_options
from jobs.imagefiles import IMAGE_SUFFIXES
from pipeline import cluster, driver, events, job, manifest, progress, restore, status
from pipeline.storage import MAX_SOURCE_BYTES, READ_TIMEOUT_S, Store, redact

EXIT_SOME_FAILED = 10
ARCHIVE_SUFFIXES = (*IMAGE_SUFFIXES, ".gif", ".pnm", ".pbm", ".jxl")


def _code_version() -> str:
    try:
        return metadata.version("callic")
    except metadata.PackageNotFoundError:
        return "unknown"


def _finish(job_store: Store, summary: driver.RunSummary, args: argparse.Namespace) -> int:
    """Compact the manifest and report the job; exit 10 unless every image is archived."""
    driver.finish(job_store)
    st = status.job_status(job_store)
    if not args.quiet:
        print(
            f"job {st['job']}: {st['ok']} of {st['images']} images archived, {_failures(st)}, {st['pending']} left; "
            f"{st['source_bytes']} -> {st['stored_bytes']} bytes; "
            f"this run {summary.ok + summary.failed} images in {summary.seconds:.1f} s on {summary.workers} worker(s)"
        )
        print(f"manifest: {redact(job_store.url)}/manifest.parquet")
    _report_failures(summary.errors, args, "image_failed")
    if st["failed"] or st["pending"]:
        return EXIT_SOME_FAILED
    return 0


def _report_failures(errors: list[str], args: argparse.Namespace, event: str) -> None:
    """The run's failures on stderr: the first 20 as text, or under ``--log-json`` every one as
    an event (stderr then holds JSON lines only)."""
    if args.log_json:
        for err in errors:
            key, _, error = err.partition(": ")
            events.emit(event, level=logging.WARNING, key=key, error=error)
    elif not args.quiet:
        for err in errors[:20]:
            print(f"  failed: {err}", file=sys.stderr)
        if len(errors) > 20:
            print(f"  ... and {len(errors) - 20} more (see the manifest)", file=sys.stderr)


def _failures(st: dict[str, Any]) -> str:
    """``3 failed (2 permanent, 1 retryable)``: what ``resume`` will and will not redo."""
    if not st["failed"]:
        return "0 failed"
    kinds = [
        f"{st[key]} {name}"
        for key, name in (
            ("failed_permanent", "permanent"),
            ("failed_retryable", "retryable"),
            ("failed_out_of_attempts", "out of attempts"),
        )
        if st[key]
    ]
    return f"{st['failed']} failed ({', '.join(kinds)})"


def _state(st: dict[str, Any]) -> str:
    """One line a person can act on: done, done with failures (of which kinds), or not done."""
    if not st["complete"]:
        return f"not complete: {st['pending']} not done, run `callic resume`"
    if not st["failed"]:
        return "complete"
    hints = ["`callic resume` retries the retryable ones"] if st["failed_retryable"] else []
    if st["failed_permanent"] or st["failed_out_of_attempts"]:
        hints.append("`callic resume --retry-failed` retries every failed one (after fixing the files)")
    return f"complete, {_failures(st)}; {'; '.join(hints)}"


def _codec_counts(codecs: dict[str, int]) -> str:
    """``callic 3, jxl-lossless 2, passthrough 1``: most used first."""
    return ", ".join(f"{name} {n}" for name, n in sorted(codecs.items(), key=lambda kv: (-kv[1], kv[0])))


def _model_copies(models: dict[str, str]) -> dict[bytes, bytes]:
    """The bytes of the model files an encoder's fingerprint names (SHA-256 -> bytes), read from
    the files it hashed: what a job folder keeps (``job.copy_models``)."""
    return {bytes.fromhex(h): modelfiles.bytes_of(bytes.fromhex(h)) for h in set(models.values())}


def show_progress(args: argparse.Namespace) -> bool:
    """Bars and phase lines: not with ``--quiet``, and not with ``--log-json`` (JSON lines only)."""
    return not args.quiet and not args.log_json


def connect_ray(args: argparse.Namespace) -> None:
    """Join or start Ray, saying so: starting a local cluster takes seconds."""
    if cluster.connected():
        return
    where = f"connecting to the Ray cluster at {args.address}" if args.address else "starting a local Ray cluster"
    with progress.phase(where, show_progress(args)):
        cluster.connect(args.address, log_json=args.log_json)


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
    settings = CodecSettings(
        codec=args.codec,
        model=args.model,
        batch=args.batch,
        jpeg=args.jpeg,
        quality=args.quality,
        lossy_model=lossy_model or args.lossy_model,
        **coding_fields(args),  # every flag encode has, checked here
    )
    corpus: dict[str, Any] = {}
    if args.adapt_corpus:
        settings, corpus = _adapt_corpus(args, src, [key for key, _ in items], settings, job_id)
    # Fail before the job exists; the workers load the same files and check their hashes.
    with progress.phase("reading the models", show_progress(args)):  # their hashes, from their bytes
        models = open_encoder(settings, "cpu", lazy=True).fingerprint()
        copies = _model_copies(models)
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
        model_hash=models.get("model", ""),
        models=models,
        code_version=_code_version(),
        n_images=len(items),
        n_shards=(len(items) + args.shard_size - 1) // args.shard_size,
        max_source_bytes=args.max_source_bytes,
        read_timeout_s=args.read_timeout,
        format_version=FORMAT_VERSION,
        corpus=corpus,
    )
    spec = job.create(job_store, spec, job.shards_table(items, args.shard_size), copies)
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


def _adapt_corpus(
    args: argparse.Namespace, src: Store, keys: list[str], settings: CodecSettings, job_id: str
) -> tuple[CodecSettings, dict[str, Any]]:
    """``--adapt-corpus``: the settings to code with (the corpus model, if kept) and the spec's facts."""
    if settings.codec not in ("auto", "callic"):
        raise UsageError("--adapt-corpus adapts the learned coder: use it with --codec auto or callic")
    if (
        args.corpus_sample < 2
        or args.corpus_steps < 1
        or (args.corpus_minutes is not None and args.corpus_minutes <= 0)
    ):
        raise UsageError("--corpus-sample must be >= 2, --corpus-steps >= 1, --corpus-minutes > 0")
    n = min(args.corpus_sample, len(keys))
    with progress.phase(f"adapting the model to a sample of {n} images", show_progress(args)):
        settings, corpus = corpusjob.adapt_to_corpus(
            src,
            keys,
            settings,
            job_id,
            args.corpus_sample,
            args.corpus_steps,
            args.corpus_minutes,
            (args.max_source_bytes, args.read_timeout),
        )
    events.emit("corpus_adapted", job=job_id, **{k: v for k, v in corpus.items() if not isinstance(v, list)})
    if not args.quiet:
        print(corpusjob.describe(corpus))
    return settings, corpus


def _run(job_store: Store, spec: job.JobSpec, src: Store, settings: CodecSettings, args: argparse.Namespace) -> int:
    spec_sources = job.load(job_store)[1]
    retry = getattr(args, "retry_failed", False)  # resume's flag
    tasks = driver.pending_tasks(spec, spec_sources, manifest.read_all(job_store), retry_failed=retry)
    if tasks:
        connect_ray(args)
    summary = driver.run(
        spec,
        src,
        job_store,
        ArchiveCodecFactory(settings, spec.models or None),
        tasks,
        args.workers,
        args.gpus_per_worker,
        show_progress=show_progress(args),
    )
    return _finish(job_store, summary, args)


def cmd_resume(args: argparse.Namespace) -> int:
    events.configure(args.log_json, args.verbose)
    options = storage_options(args.storage_options)
    job_store = Store(args.job, options)
    spec, _ = job.load(job_store)
    settings = _job_model(CodecSettings.from_dict(spec.codec, f"job {spec.job_id}'s codec settings"), spec, job_store)
    with progress.phase("reading the models", show_progress(args)):
        found = open_encoder(settings, "cpu", lazy=True).fingerprint()
    try:  # a spec from before ``models`` pins the learned model (and a cca job its lossy_model_hash)
        check_pinned(found, spec.models or {"model": spec.model_hash}, f"job {spec.job_id}")
    except CallicError as exc:
        raise job.JobError(f"{exc}: it was archived with other models than this installation has") from None
    job_store.check_writable()
    # A job made before jobs kept their models gets its copies now (the same files, checked above).
    job.copy_models(job_store, _model_copies(found))
    src = Store(spec.src, options)
    return _run(job_store, spec, src, settings, args)


def _job_model(settings: CodecSettings, spec: job.JobSpec, job_store: Store) -> CodecSettings:
    """The settings to resume with: where the job's model file (its ``--model``, or its corpus
    model) is not on this machine, the job folder's copy of it, installed where models are found."""
    if not settings.model or os.path.exists(settings.model) or "model" not in spec.models:
        return settings
    modelfiles.add_source(job.model_source(job_store))  # the job's copies: of the model, and of its base
    digest = bytes.fromhex(spec.models["model"])
    _, data = modelfiles.find_by_hash(digest, modelfiles.mgcf_file_name(digest))
    path = modelfiles.write_named(data, corpusjob.USER_MODELS, modelfiles.mgcf_file_name)
    return dataclasses.replace(settings, model=str(path))


def cmd_status(args: argparse.Namespace) -> int:
    st = status.job_status(Store(args.job, storage_options(args.storage_options)))
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    if args.quiet:
        return 0
    print(f"job {st['job']} (created {st['created']}, source {redact(st['src'])})")
    print(
        f"  images: {st['images']} in {st['shards']} shards; ok {st['ok']}, failed {st['failed']}, "
        f"not done {st['pending']}"
    )
    print(f"  {_state(st)}")
    for line in _size_lines(st):
        print(f"  {line}")
    if st["images_per_s"]:
        print(f"  throughput: {st['images_per_s']} images/s over the job's runs")
    for err, n in st["errors"].items():
        print(f"  {n} failed with {err}")
    return 0


def _size_lines(st: dict[str, Any]) -> list[str]:
    """Sizes in each kind's own unit: bits per subpixel for lossless files, bits per pixel and
    PSNR for lossy ones; the total only when a job has both."""
    lines = []
    ll, ly = st["lossless"], st["lossy"]
    if ll["images"]:
        bpsp = f", {ll['bpsp']:.3f} bpsp" if ll["bpsp"] is not None else ""
        if ll.get("bpsp_with_corpus_model") is not None:
            bpsp += f" ({ll['bpsp_with_corpus_model']:.3f} with the {st['corpus_model_bytes']}-byte corpus model)"
        ratio = f" ({100 * ll['stored_bytes'] / ll['source_bytes']:.1f}% of the source)" if ll["source_bytes"] else ""
        lines.append(
            f"lossless: {ll['images']} images, {ll['source_bytes']} -> {ll['stored_bytes']} bytes{ratio}{bpsp}"
        )
    if ly["images"]:
        bpp = f", {ly['bpp']:.3f} bpp" if ly["bpp"] is not None else ""
        psnr = f", PSNR {ly['psnr_mean']:.2f} dB (mean)" if ly["psnr_mean"] is not None else ""
        lines.append(f"lossy: {ly['images']} images, {ly['source_bytes']} -> {ly['stored_bytes']} bytes{bpp}{psnr}")
    if ll["images"] and ly["images"]:
        lines.append(
            f"all: {st['source_bytes']} -> {st['stored_bytes']} bytes "
            f"({100 * st['ratio_to_source']:.1f}% of the source, saved {st['saved_bytes']})"
        )
    if st["codecs"]:
        lines.append(f"codecs: {_codec_counts(st['codecs'])}")
    return lines


def cmd_restore(args: argparse.Namespace) -> int:
    events.configure(args.log_json, args.verbose)
    options = storage_options(args.storage_options)
    archive, out = Store(args.archive, options), Store(args.out, options)
    settings = CodecSettings(model=args.model)
    if args.model:
        codec.load_model(args.model)  # a missing or damaged --model fails here, not in every worker
    connect_ray(args)
    s = restore.run(
        archive,
        out,
        ArchiveCodecFactory(settings, restoring=True),
        args.match,
        args.workers,
        args.gpus_per_worker,
        show_progress=show_progress(args),
        overwrite=args.overwrite,
    )
    if not args.quiet:
        print(
            f"restored {s.restored} of {s.images} images from {s.jobs} job(s) to {redact(out.url)} in "
            f"{s.seconds:.1f} s; {s.failed} failed; {s.skipped_failed_rows} recorded as failed at archive time"
        )
    if not args.log_json:  # under --log-json each failure was a restore_failed event already
        _report_failures(s.errors, args, "restore_failed")
    return EXIT_SOME_FAILED if s.failed else 0


def common_arguments(p: argparse.ArgumentParser, ray_flags: bool = True) -> None:
    p.add_argument("--storage-options", help=STORAGE_OPTIONS_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, phase lines or summary; errors still")
    if ray_flags:
        p.add_argument(
            "--address", help="Ray cluster to join (e.g. auto, ray://head:10001); default: start a local one"
        )
        p.add_argument("--workers", type=int, help="worker actors (default: one per GPU, else 1)")
        p.add_argument("--gpus-per-worker", type=float, default=1.0, help="GPUs per worker when the cluster has GPUs")
        p.add_argument(
            "--log-json",
            action="store_true",
            help="structured logs: stderr holds only JSON objects, one per line (no progress bar, no worker output)",
        )
        p.add_argument("-v", "--verbose", action="store_true", help="log every shard")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("archive", help="compress every image under SRC into a job folder under DST, with a manifest")
    p.add_argument("src", help="folder, fsspec URL (s3://bucket/prefix) or glob (s3://b/photos/**/*.png)")
    p.add_argument("dst", help="folder or fsspec URL; the job goes to DST/JOB")
    p.add_argument("--job-id", help="job name (default: date-time-random)")
    p.add_argument(
        "--codec",
        choices=registry.codec_names(),
        default=DEFAULT_CODEC,
        help="; ".join(
            f"{e.name}{' (default)' if e.name == DEFAULT_CODEC else ''}: {e.help}" for e in registry.codec_entries()
        ),
    )
    p.add_argument("--quality", type=int, help="cca: shipped rate point 1..N, higher is better (default N)")
    p.add_argument("--lossy-model", help="cca: a model file instead of a shipped rate point")
    add_coding_arguments(
        p, f"libjxl effort 1..10 of the JPEG-XL lossless files, as cjxl -e (default {DEFAULT_JXL_EFFORT})"
    )
    p.add_argument("--batch", type=int, default=0, help="images adapted together (default: 8 on a GPU, 1 on a CPU)")
    p.add_argument("--model", help="model file; default: the shipped model")
    p.add_argument(
        "--adapt-corpus",
        action="store_true",
        help="first adapt the model to a sample of the images, and code the job with it if it pays",
    )
    p.add_argument(
        "--corpus-sample",
        type=int,
        default=DEFAULT_CORPUS_SAMPLE,
        help=f"images adapted to (default {DEFAULT_CORPUS_SAMPLE})",
    )
    p.add_argument(
        "--corpus-steps",
        type=int,
        default=DEFAULT_CORPUS_STEPS,
        help=f"fine-tuning steps of the corpus model (default {DEFAULT_CORPUS_STEPS})",
    )
    p.add_argument("--corpus-minutes", type=float, help="stop the corpus fine-tuning after this many minutes")
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
    common_arguments(p)
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("resume", help="continue an archive job from its manifest")
    p.add_argument("job", help="the job folder, DST/JOB")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="also retry images that failed for good (unreadable, truncated, unsupported) or ran out of attempts",
    )
    common_arguments(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="progress, bytes saved and failures of an archive job")
    p.add_argument("job", help="the job folder, DST/JOB")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")
    common_arguments(p, ray_flags=False)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("restore", help="decode archived images back to their files, hashes verified")
    p.add_argument("archive", help="a DST (all its jobs) or one job folder DST/JOB")
    p.add_argument("out", help="folder or fsspec URL to write the images into, under their original names")
    p.add_argument("--match", help="only source keys matching this glob (e.g. 'cats/*.png')")
    p.add_argument("--model", help="model file, if the one the files name is not installed")
    p.add_argument("--overwrite", action="store_true", help="replace files in OUT that differ (default: refuse them)")
    common_arguments(p)
    p.set_defaults(func=cmd_restore)
