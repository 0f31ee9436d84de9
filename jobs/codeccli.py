"""``callic encode``, ``decode`` and ``info``: the file commands, in the manner of cjxl/djxl.

Inputs and outputs follow ``cp SRC... DIR``:

- ``callic encode IN OUT``: one file to one file; if OUT is an existing folder (or ends with
  ``/``), the file goes into it as ``<stem>.cllc``. ``decode`` likewise, as ``<stem>.png`` (or
  the ``--format``'s extension).
- several inputs, or an input folder: OUT is a folder, created (with its parents) if missing. A
  folder is searched recursively for the image files ``callic archive`` takes (``decode``:
  ``.cllc`` files; names starting with ``.`` are skipped), and its subfolders are mirrored in OUT.
  Two inputs that would give the same output are refused before any work (exit 64); a folder
  with no such file is exit 1. Existing outputs are replaced (atomically), as cjxl does.
- ``-`` as the only input reads stdin, ``-`` as OUT writes stdout (one input only; never a
  terminal). ``decode`` to stdout writes ``--format`` (default PNG). With stdout as OUT, the
  report line goes to stderr.

One model load serves every file. A file that fails is reported (naming it) and the others go
on; the exit code is then that of the first failure (README "Exit codes"). ``--json`` prints one
JSON object per file on stdout (on stderr when stdout holds the image) and nothing else there;
a progress bar shows on stderr for several files when stderr is a terminal, unless ``--quiet``
or ``--json``.

Only light modules are imported at the top: ``callic info`` must not wait for torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codec.defaults import (
    DEFAULT_JXL_EFFORT,
)
from codec.errors import CallicError
from jobs.cli import COMMANDS, THREADS_HELP, UsageError, error_report

STDIO = "-"
STDIN_NAME, STDOUT_NAME = "<stdin>", "<stdout>"
# --format (decode) -> the writer's format name and the extension of files written into a folder.
DECODE_FORMATS = {"png": ("PNG", ".png"), "tiff": ("TIFF", ".tif"), "ppm": ("PPM", ".ppm"), "bmp": ("BMP", ".bmp")}


@dataclass(frozen=True)
class Job:
    """One file to code: where it comes from and where it goes (``-``: stdin / stdout)."""

    source: str
    target: str
    mirrored: bool = False  # written under a folder mirroring an input folder: make its subfolder

    @property
    def name(self) -> str:
        return STDIN_NAME if self.source == STDIO else self.source

    @property
    def target_name(self) -> str:
        return STDOUT_NAME if self.target == STDIO else self.target


# ---------------------------------------------------------------- inputs and outputs


def _files_under(folder: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Files under ``folder`` with one of ``suffixes`` (any case), sorted, none hidden."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and path.suffix.lower() in suffixes and not any(p.startswith(".") for p in rel.parts):
            yield path


def plan(inputs: list[str], output: str, suffixes: tuple[str, ...], out_suffix: str) -> list[Job]:
    """The jobs for ``INPUT... OUTPUT`` under the cp convention (module docstring); ``UsageError``
    for a combination that cannot mean anything, before any work."""
    if STDIO in inputs and len(inputs) > 1:
        raise UsageError("- (stdin) must be the only input")
    batch = len(inputs) > 1 or any(Path(p).is_dir() for p in inputs if p != STDIO)
    if output == STDIO:
        if batch:
            raise UsageError("- (stdout) takes one input file, not several or a folder")
        if sys.stdout.isatty():
            raise UsageError("refusing to write a binary file to a terminal; redirect stdout or name a file")
        return [Job(inputs[0], STDIO)]
    into_folder = batch or Path(output).is_dir() or output.endswith(("/", os.sep))
    if not into_folder:
        return [Job(inputs[0], output)]
    if inputs == [STDIO]:
        raise UsageError("with - (stdin) as input, name the output file")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{output} is not a folder (with several inputs or a folder, the last argument is one)")
    jobs = []
    for p in map(Path, inputs):
        if p.is_dir():
            jobs += [
                Job(str(f), str((out / f.relative_to(p)).with_suffix(out_suffix)), mirrored=True)
                for f in _files_under(p, suffixes)
            ]
        else:
            jobs.append(Job(str(p), str(out / (p.stem + out_suffix))))
    if not jobs:
        raise CallicError(f"no {'/'.join(suffixes)} files in {', '.join(inputs)}")  # exit 1, like a missing file
    seen: dict[str, str] = {}
    for job in jobs:
        if job.target in seen:
            raise UsageError(f"{seen[job.target]} and {job.source} would both be written to {job.target}")
        seen[job.target] = job.source
    out.mkdir(parents=True, exist_ok=True)
    return jobs


def read_stdin(limit: int) -> bytes:
    """All of stdin, at most ``limit`` bytes (the cap a file of that kind has)."""
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{STDIN_NAME}: more than the {limit}-byte limit")
    return data


def write_output(job: Job, data: bytes) -> None:
    from jobs.atomic import write_atomically

    if job.target == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        if job.mirrored:
            Path(job.target).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(job.target, data)


# ---------------------------------------------------------------- running and reporting


class Reporter:
    """Where each file's result goes: a human line, a JSON object, or nothing (``--quiet``), on
    stdout unless stdout carries the image; errors always on stderr, naming the file."""

    def __init__(self, args: argparse.Namespace, jobs: list[Job]):
        self.json, self.quiet = args.json, args.quiet
        self.stream = sys.stderr if any(j.target == STDIO for j in jobs) else sys.stdout
        self.bar = None
        if len(jobs) > 1 and not (self.quiet or self.json) and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=len(jobs), file=sys.stderr, unit="file", leave=False)

    def _print(self, text: str, stream: Any) -> None:
        if self.bar is not None:
            self.bar.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    def done(self, line: str, record: dict[str, Any], details: list[str]) -> None:
        if self.json:
            self._print(json.dumps(record), self.stream)
        elif not self.quiet:
            self._print("\n".join([line, *details]), self.stream)
        self._step()

    def failed(self, job: Job, exc: BaseException) -> int:
        code, message = error_report(exc, job.name)
        self._print(f"callic: error: {message}", sys.stderr)
        if self.json:
            self._print(json.dumps({"input": job.name, "error": message, "exit_code": code}), self.stream)
        self._step()
        return code

    def _step(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_jobs(args: argparse.Namespace, jobs: list[Job], work: Callable[[Job, Reporter], None]) -> int:
    """Every job in turn; a failed one is reported and the rest go on. The first failure's code."""
    reporter = Reporter(args, jobs)
    first = 0
    try:
        for job in jobs:
            try:
                work(job, reporter)
            except (CallicError, OSError) as exc:
                code = reporter.failed(job, exc)
                first = first or code
    finally:
        reporter.close()
    return first


class Once:
    """A value made on first use and kept (a model), or the error making it gave, raised again
    for every later file instead of trying again."""

    def __init__(self, make: Callable[[], Any]):
        self._make, self._value, self._error = make, None, None

    def get(self) -> Any:
        if self._error is not None:
            raise self._error
        if self._value is None:
            try:
                self._value = self._make()
            except Exception as exc:
                self._error = exc
                raise
        return self._value


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------- encode


def cmd_encode(args: argparse.Namespace) -> int:
    """Every input through the chosen ``codec.registry`` codec, opened once with the flags'
    settings (``LosslessSettings``, and the lossy fields for a lossy codec, whose ``--model`` is
    its own model file)."""
    from codec import registry
    from jobs.adaptargs import coding_fields
    from jobs.imagefiles import IMAGE_SUFFIXES

    entry = registry.codec_entry(args.codec)
    if args.quality is not None and not entry.lossy:
        raise UsageError(f"--quality applies to a lossy codec (cca) only, not {args.codec}")
    jobs = plan(args.inputs, args.output, IMAGE_SUFFIXES, ".cllc")
    from jobs.runtime import setup_torch

    setup_torch(args.threads, args.device)
    fields = coding_fields(args)  # flags checked before any file is read
    model = {"lossy_model": args.model, "quality": args.quality} if entry.lossy else {"model": args.model}
    chosen = registry.codec(args.codec)
    settings = chosen.settings_type.pick(fields | model)

    def open_encoder():
        try:
            return chosen.open(settings, args.device, lazy=True)
        except ValueError as exc:  # --quality outside the shipped rate points
            raise UsageError(str(exc)) from None

    encoder = Once(open_encoder)
    if entry.lossy:
        encoder.get()  # a bad --quality or --model is the command's error, not each file's
    return run_jobs(args, jobs, lambda job, rep: encode_file(job, rep, args, encoder, entry.lossy))


def _read_raster(job: Job):
    from codec.images import MAX_INPUT_BYTES, read_image

    if job.source != STDIO:
        return read_image(job.source)
    return read_image(read_stdin(MAX_INPUT_BYTES), name=STDIN_NAME)


def encode_file(job: Job, rep: Reporter, args: argparse.Namespace, encoder: Once, lossy: bool) -> None:
    """One image to a ``.cllc``. A lossy codec gets it as 8-bit RGB (gray, palette and RGBA are
    turned into RGB, alpha dropped; other images are refused): ``encode --codec cca`` means a
    lossy file, where an archive job would code what the lossy codec cannot take losslessly."""
    from codec import registry

    raster = _read_raster(job)
    if lossy:
        raster = lossy_input(raster)
    start = time.perf_counter()
    [(data, report)] = encoder.get().encode_many([raster], verify=args.verify)
    seconds = time.perf_counter() - start
    write_output(job, data)
    if registry.coder_named(report.coder).lossy:
        _report_lossy(job, rep, args, raster, data, report, seconds)
    else:
        _report_lossless(job, rep, args, raster, data, report, seconds)


def _report_lossless(job: Job, rep: Reporter, args: argparse.Namespace, raster, data: bytes, report, seconds) -> None:
    samples = raster.pixels.size
    bpsp = 8 * len(data) / samples
    record = {
        "input": job.name,
        "output": job.target_name,
        "bytes": len(data),
        "bpsp": bpsp,
        "seconds": round(seconds, 3),
        "coder": report.coder,
        "adapters": report.adapters,
        "adapter_bytes": report.adapter_bytes,
        "learned_bytes": report.learned_bytes,
        "classical_bytes": report.classical_bytes,
        "verified": args.verify,
    }
    candidates = ""
    if record["learned_bytes"] is not None and record["classical_bytes"] is not None:
        candidates = f" (learned {record['learned_bytes']}, JPEG-XL {record['classical_bytes']} bytes)"
    line = (
        f"{job.name} -> {job.target_name}: {len(data)} bytes, {bpsp:.3f} bpsp, {report.coder}{candidates}, "
        f"{seconds:.2f} s{' (verified)' if args.verify else ''}"
    )
    rep.done(line, record, _stage_lines(report, samples) if args.verbose else [])


def _stage_lines(report, samples: int) -> list[str]:
    """``-v``: each stage's time, and what adaptation estimated."""
    stages = ("rate_estimate_s", "fine_tune_s", "exact_pass_s", "coding_s", "classical_s", "verify_s")
    times = ", ".join(
        f"{name[:-2].replace('_', ' ')} {report.timings[name]:.2f} s" for name in stages if name in report.timings
    )
    lines = [f"  stages: {times}"]
    if report.steps and report.estimated_base_bits is not None:
        base, adapted = report.estimated_base_bits, report.estimated_adapted_bits
        lines.append(
            f"  adaptation: T={report.steps}, adapters {report.adapters} ({report.adapter_bytes} bytes); "
            f"estimated image bpsp {base / samples:.4f} without, {adapted / samples:.4f} with (+ adapters "
            f"{8 * report.adapter_bytes / samples:.4f})"
        )
    return lines


def _report_lossy(job: Job, rep: Reporter, args: argparse.Namespace, raster, data: bytes, report, seconds) -> None:
    """A lossy file in bits per pixel, with the PSNR of what it decodes to (the encoder's)."""
    bpp = 8 * len(data) / (raster.width * raster.height)
    quality = _finite(report.psnr) if report.psnr is not None else None
    level = report.extra_facts.get("quality")
    setting = f"quality {level}" if level else f"model {report.model_hash[:16]}"
    record = {
        "input": job.name,
        "output": job.target_name,
        "bytes": len(data),
        "bpp": bpp,
        "psnr": quality,
        "seconds": round(seconds, 3),
        "coder": report.coder,
        "quality": int(level) if level else None,
        "model_sha256": report.model_hash,
        "verified": args.verify,
    }
    line = (
        f"{job.name} -> {job.target_name}: {len(data)} bytes, {bpp:.3f} bpp, PSNR "
        f"{'inf' if quality is None else f'{quality:.2f}'} dB, {report.coder} (lossy, {setting}), {seconds:.2f} s"
        f"{' (verified)' if args.verify else ''}"
    )
    stages = ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in report.timings.items())
    rep.done(line, record, [f"  stages: {stages}"] if args.verbose else [])


def lossy_input(raster):
    """What a lossy codec codes of an image: 8-bit RGB as it is; 8-bit gray, palette or RGBA as
    RGB (alpha dropped); ``UnsupportedError`` for anything else."""
    import numpy as np

    import codec
    from codec.errors import UnsupportedError

    if raster.mode == "RGBA" or (raster.pixels.dtype == np.uint8 and raster.mode in ("L", "P")):
        raster = codec.Raster.from_array(np.ascontiguousarray(raster_rgb(raster)))
    if raster.pixels.dtype != np.uint8 or raster.mode != "RGB":
        raise UnsupportedError(f"the lossy codec takes 8-bit RGB images, not {raster.mode} {raster.pixels.dtype}")
    return raster


def raster_rgb(raster):
    """8-bit gray, palette or RGBA pixels as RGB, for the lossy codec (alpha is dropped)."""
    import numpy as np
    from PIL import Image

    if raster.mode == "RGBA":
        return raster.pixels[..., :3]
    if raster.mode == "P":
        image = Image.fromarray(raster.pixels, "P")
        image.putpalette(raster.palette, raster.palette_mode or "RGB")
        return np.asarray(image.convert("RGB"))
    return np.repeat(raster.pixels[..., None], 3, axis=2)


# ---------------------------------------------------------------- decode


def cmd_decode(args: argparse.Namespace) -> int:
    suffix = DECODE_FORMATS[args.format or "png"][1]
    jobs = plan(args.inputs, args.output, (".cllc",), suffix)
    formats = {job.target: _output_format(job, args.format) for job in jobs}  # before decoding anything
    from jobs.runtime import setup_torch

    setup_torch(args.threads, "cpu")
    models = {
        "lossless": Once(lambda: _model_file(args.model, lossy=False)),
        "lossy": Once(lambda: _model_file(args.model, lossy=True)),
    }
    return run_jobs(args, jobs, lambda job, rep: decode_file(job, rep, args, formats[job.target], models))


def _model_file(path: str, lossy: bool):
    """``decode --model``: the file as the model of a lossy or a lossless file, on the CPU."""
    if lossy:
        from codec.cca.api import load_lossy_model

        return load_lossy_model(path, None, "cpu")
    import codec

    return codec.load_model(path, "cpu")


def _output_format(job: Job, chosen: str | None) -> str:
    """``--format`` if given, else what the output's extension says (PNG for stdout); an unknown
    extension is refused (exit 4) before anything is decoded."""
    from codec.errors import UnsupportedError
    from codec.images import image_format

    if chosen is not None:
        return DECODE_FORMATS[chosen][0]
    if job.target == STDIO:
        return "PNG"
    try:
        return image_format(job.target)
    except UnsupportedError as exc:
        raise UnsupportedError(f"{job.target}: {exc}") from None


def decode_file(job: Job, rep: Reporter, args: argparse.Namespace, fmt: str, models: dict[str, Once]) -> None:
    """One ``.cllc`` back to an image file, its pixels checked against the hash the file stores."""
    import codec
    from codec.container import MAX_FILE_BYTES, read_cllc
    from codec.images import write_image_bytes

    start = time.perf_counter()
    data = read_stdin(MAX_FILE_BYTES) if job.source == STDIO else read_cllc(job.source)
    meta = codec.info(data)
    model = models["lossy" if meta["lossy"] else "lossless"].get() if args.model else None
    raster = codec.decode(data, model=model)
    image = write_image_bytes(raster, fmt)
    write_output(job, image)
    seconds = time.perf_counter() - start
    record = {
        "input": job.name,
        "output": job.target_name,
        "bytes": len(image),
        "format": fmt,
        "width": raster.width,
        "height": raster.height,
        "mode": raster.mode,
        "coder": meta["coder"],
        "lossy": meta["lossy"],
        "seconds": round(seconds, 3),
    }
    line = (
        f"{job.name} -> {job.target_name}: {raster.width}x{raster.height} {raster.mode}, {fmt}, "
        f"{seconds:.2f} s, pixels verified"
    )
    rep.done(line, record, [])


# ---------------------------------------------------------------- info


def cmd_info(args: argparse.Namespace) -> int:
    """The file's header and sections as JSON, torch-free; with ``--quiet`` only the exit code
    (0: a well-formed file; the pixels are not decoded)."""
    import codec.header
    from codec.container import read_cllc

    try:
        meta = codec.header.info(read_cllc(args.input))
    except (CallicError, OSError) as exc:
        code, message = error_report(exc, args.input)
        print(f"callic: error: {message}", file=sys.stderr)
        return code
    if not args.quiet:
        print(json.dumps(meta, indent=2))
    return 0


# ---------------------------------------------------------------- parsers


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _io_arguments(p: argparse.ArgumentParser, what: str, into: str) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help=f"{what} file, a folder of them (searched recursively), or - for stdin",
    )
    p.add_argument(
        "output",
        metavar="OUTPUT",
        help=f"{into} file, or - for stdout; a folder with several inputs or a folder (created if missing), as with cp",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per file on stdout (and nothing else)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--threads", type=_positive, help=THREADS_HELP)


def add_encode_parser(sub: Any) -> None:
    from jobs.adaptargs import add_coding_arguments

    p = sub.add_parser("encode", help=COMMANDS["encode"].help)
    _io_arguments(p, "image", "the .cllc")
    from codec import registry

    codecs = registry.codec_entries()
    default = codecs[0].name
    codec_help = "; ".join(f"{e.name}{' (default)' if e.name == default else ''}: {e.help}" for e in codecs)
    codec_help += " (a lossy codec's file: 8-bit RGB, alpha dropped)"
    p.add_argument("--codec", choices=[e.name for e in codecs], default=default, help=codec_help)
    p.add_argument("--quality", type=int, help="cca: shipped rate point 1..N, higher is better (default N)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--verify", action="store_true", help="decode on the CPU and compare before writing")
    p.add_argument("--model", help="model file (.safetensors); default: the shipped model")
    p.add_argument("-v", "--verbose", action="store_true", help="print the time of each stage and the adaptation")
    add_coding_arguments(p, f"libjxl effort 1..10 of the JPEG-XL lossless candidate (default {DEFAULT_JXL_EFFORT})")
    p.set_defaults(func=cmd_encode)


def add_decode_parser(sub: Any) -> None:
    p = sub.add_parser("decode", help=COMMANDS["decode"].help)
    _io_arguments(p, "a .cllc", "the image")
    p.add_argument(
        "--format",
        choices=list(DECODE_FORMATS),
        help="output format (default: the output's extension; PNG for stdout and folders)",
    )
    p.add_argument("--model", help="model file, if the one the file names is not installed")
    p.set_defaults(func=cmd_decode)


def add_info_parser(sub: Any) -> None:
    p = sub.add_parser("info", help=COMMANDS["info"].help)
    p.add_argument("input", help="the .cllc file")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing: the exit code says if the file is sound")
    p.set_defaults(func=cmd_info)
