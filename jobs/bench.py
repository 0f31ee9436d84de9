"""``callic bench``: lossless benchmark of callic against the classic lossless coders.

Every codec gets the same decoded 8-bit RGB pixel array; every round trip is checked (values,
dtype and shape) and a mismatch is a failure, never a size. Sizes are the real encoded bytes
(callic: the whole ``.cllc`` file, header and checksums included); bpsp = 8 * bytes / (H * W * 3).

Codecs and their settings (imagecodecs; ``numthreads`` = ``--threads`` where the library takes it):

============  ==================================================================================
callic        ``codec.api.encode`` / ``decode`` with the given (or shipped) model; ``--steps`` and
              ``--adapt-order`` (comma lists) run one variant per (T, order), named ``callic``
              for T = 0 and ``callic-t<T>[-<order>]`` otherwise; sizes include the adapters;
              always the learned coder's file (``coder="learned"``), never JPEG-XL's
jxl-e7/-e9    JPEG XL ``lossless=True, effort=7/9`` (``level=100`` is *not* lossless in imagecodecs)
webp-m6       WebP lossless ``method=6, level=100`` (in lossless mode level is the effort: cwebp -z 9)
jpeg2000      reversible 5/3 wavelet, ``mct=True`` (the reversible colour transform RCT), J2K codestream
jpegls        JPEG-LS (CharLS) ``level=0`` (NEAR=0, lossless), sample-interleaved, after the HP1 colour
              transform (R-G, G, B-G, mod 256) done here: imagecodecs exposes none of CharLS's own
              HP1-HP3 transforms, and without one JPEG-LS codes RGB about 25% larger
png           libpng, zlib ``level=9`` (best), libpng's default adaptive filtering
============  ==================================================================================

Output in ``--out``: ``results.parquet`` (one row per image and codec), ``report.md`` (per-image
bpsp, per-codec summary, environment) and ``bpsp.png``, each written atomically at the end; and
``rows.jsonl``, every row as soon as it is finished (``jobs.rowlog``). ``--resume`` keeps the rows
an earlier run with the same settings finished (failures included) and runs only the missing ones.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np

from codec.defaults import CALIBRATION_SCHEMES, DEFAULT_CALIBRATION, DEFAULT_STEPS, MIN_ADAPT_PIXELS
from jobs.adaptargs import ADAPT_LAYERS, ADAPT_LAYERS_HELP, adapt_config, adapt_fields, add_adapt_arguments
from jobs.atomic import write_atomically
from jobs.benchimages import SUFFIXES, NotRGBError, list_bench_images, load_pixels  # noqa: F401 (re-exported)
from jobs.benchray import RAY_ATTEMPTS, Task, run_images_on_ray  # noqa: F401 (RAY_ATTEMPTS re-exported)
from jobs.cli import STORAGE_OPTIONS_HELP, storage_options
from jobs.rowlog import RowLog
from jobs.runtime import setup_torch

ANCHOR_NAMES = ("jxl-e7", "jxl-e9", "webp-m6", "jpeg2000", "jpegls", "png")
CODEC_NAMES = ("callic", *ANCHOR_NAMES)
REFERENCE = "jxl-e9"  # the summary's ratios are to this codec's mean (else to the first codec)
STAGES = ("rate_estimate_s", "fine_tune_s", "exact_pass_s", "coding_s")  # callic's encode stages
COLUMNS = (
    "image",
    "codec",
    "width",
    "height",
    "bytes",
    "bpsp",
    "encode_s",
    "decode_s",
    "verified",
    "error",
    *STAGES,
    "adapters",
    "adapter_bytes",
)
Row = dict[str, Any]


@dataclass(frozen=True)
class Codec:
    """One lossless codec under test: pixels -> bytes -> pixels."""

    name: str
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes], np.ndarray]
    details: Callable[[], Row] | None = None  # extra columns about the last encode (stage times)


# ---------------------------------------------------------------- codecs


def anchor_codecs(threads: int | None = None) -> dict[str, Codec]:
    """The classic coders at their strongest standard lossless setting (see the module docstring).

    The lambdas look the imagecodecs functions up at call time, so a test can patch one.
    """
    ic = imagecodecs
    nt: dict[str, int] = {"numthreads": threads} if threads else {}
    return {
        "jxl-e7": Codec(
            "jxl-e7", lambda a: ic.jpegxl_encode(a, lossless=True, effort=7, **nt), lambda b: ic.jpegxl_decode(b, **nt)
        ),
        "jxl-e9": Codec(
            "jxl-e9", lambda a: ic.jpegxl_encode(a, lossless=True, effort=9, **nt), lambda b: ic.jpegxl_decode(b, **nt)
        ),
        "webp-m6": Codec(
            "webp-m6",
            lambda a: ic.webp_encode(a, level=100, lossless=True, method=6, **nt),
            lambda b: ic.webp_decode(b),
        ),
        "jpeg2000": Codec(
            "jpeg2000",
            lambda a: ic.jpeg2k_encode(a, reversible=True, mct=True, codecformat="J2K", **nt),
            lambda b: ic.jpeg2k_decode(b, **nt),
        ),
        "jpegls": Codec(
            "jpegls",
            lambda a: ic.jpegls_encode(subtract_green(a), level=0),
            lambda b: add_green(ic.jpegls_decode(b)),
        ),
        "png": Codec("png", lambda a: ic.png_encode(a, level=9), lambda b: ic.png_decode(b)),
    }


def subtract_green(pixels: np.ndarray) -> np.ndarray:
    """JPEG-LS's HP1 transform, R-G and B-G modulo 256: the decorrelation the anchor is quoted with."""
    out = pixels.copy()
    out[..., 0] -= pixels[..., 1]
    out[..., 2] -= pixels[..., 1]
    return out


def add_green(pixels: np.ndarray) -> np.ndarray:
    out = pixels.copy()
    out[..., 0] += pixels[..., 1]
    out[..., 2] += pixels[..., 1]
    return out


@dataclass(frozen=True)
class Variant:
    """One configuration of an adapting codec under test (``callic``, ``auto``: a registry codec
    whose settings take ``steps``): T (0 = no adaptation; default the CLI's and the API's
    ``DEFAULT_STEPS``), the RPFT patch order, the adapted layers and the calibration scheme
    (``codec.calibration``; named ``-cal0`` when it is not the default)."""

    steps: int = DEFAULT_STEPS
    order: str = "rate"
    calibration: int = DEFAULT_CALIBRATION
    layers: str = "all"

    def name_for(self, codec: str) -> str:
        """The column of ``codec`` at this variant: ``callic``, ``callic-t10``, ``auto-t10-all-cal0``..."""
        cal = "" if self.calibration == DEFAULT_CALIBRATION else f"-cal{self.calibration}"
        if self.steps == 0:
            return codec + cal
        order = "" if self.order == "rate" else f"-{self.order}"
        layers = "" if self.layers == "all" else f"-{self.layers}"
        return f"{codec}-t{self.steps}{order}{layers}{cal}"

    def settings(self) -> dict[str, Any]:
        """The ``codec.lossless.LosslessSettings`` fields this variant sets."""
        return {
            "steps": self.steps,
            "adapt_order": self.order,
            "adapt_layers": self.layers,
            "calibration": self.calibration,
        }


def adapts(name: str) -> bool:
    """Whether a codec under test is run once per variant: a registry codec whose settings take
    per-image fine-tuning steps (an anchor never is)."""
    from codec import registry

    if name in ANCHOR_NAMES:
        return False
    return "steps" in registry.codec(name).settings_type.field_names()


def expand_codecs(names: Sequence[str], variants: Sequence[Variant]) -> list[str]:
    """Codec names with each adapting codec replaced by one name per variant."""
    return [name for n in names for name in ([v.name_for(n) for v in variants] if adapts(n) else [n])]


def build_codecs(
    names: Sequence[str],
    model_path: str | None,
    device: str,
    threads: int | None,
    variants: Sequence[Variant] = (Variant(0),),
    adapt: dict[str, Any] | None = None,
) -> tuple[list[Codec], str | None]:
    """The selected codecs in the order given: the anchors, and ``codec.registry`` codecs (one
    per variant where they adapt, with the shared adaptation flags ``adapt``, ``LosslessSettings``
    fields). Also the learned model's SHA-256 (hex), if one is used."""
    anchors = anchor_codecs(threads)
    codecs, model_hash = [], None
    for name in names:
        if name in anchors:
            codecs.append(anchors[name])
            continue
        for v in variants if adapts(name) else [None]:
            values = {"model": model_path, **(adapt or {})} | (v.settings() if v else {"steps": 0})
            c, fingerprint = registered_codec(name, values, device, v.name_for(name) if v else name)
            codecs.append(c)
            model_hash = model_hash or fingerprint.get("model")
    return codecs, model_hash


def registered_codec(name: str, values: dict[str, Any], device: str, column: str) -> tuple[Codec, dict[str, str]]:
    """A ``codec.registry`` codec under test with the settings ``values`` (those its settings
    take), opened once: what ``callic archive --codec NAME`` would store, its decoder, and the
    report's stage times and adapters as extra columns. Also its fingerprint (model hashes)."""
    from codec import registry
    from codec.raster import Raster

    chosen = registry.codec(name)
    encoder = chosen.open(chosen.settings_type.pick(values), device)
    last: Row = {}

    def encode(pixels: np.ndarray) -> bytes:
        [(data, report)] = encoder.encode_many([Raster.from_array(pixels)], verify=False)
        last.clear()
        last.update({k: report.timings.get(k) for k in STAGES})
        last.update(adapters=report.adapters, adapter_bytes=report.adapter_bytes)
        return data

    return Codec(column, encode, lambda data: encoder.decode(data).pixels, lambda: dict(last)), encoder.fingerprint()


def model_file_hash(model_path: str | None) -> str:
    """The SHA-256 (hex) of the learned model file (the shipped default if None), from its bytes:
    the driver of a run on workers does not load the model."""
    from codec.modelfiles import default_model_path, digest_of

    return digest_of(model_path or default_model_path()).hex()


def bench_codec_names() -> tuple[str, ...]:
    """What ``--codecs`` takes: callic (with its variants), the anchors, and every lossless codec
    of ``codec.registry`` (``auto``: the file ``callic archive`` keeps)."""
    from codec import registry

    extra = [e.name for e in registry.codec_entries() if not e.lossy and e.name not in CODEC_NAMES]
    return (*CODEC_NAMES, *extra)


def comma_list(text: str) -> list[str]:
    """Comma-separated items, stripped, repeats dropped, order kept."""
    return list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))


def parse_codecs(text: str) -> list[str]:
    """``--codecs a,b``: known names, no repeats, order kept (it is the tables' column order)."""
    names, known = comma_list(text), bench_codec_names()
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown codec {', '.join(unknown) or '(none)'}; use {','.join(known)}")
    return names


# ---------------------------------------------------------------- input


# ---------------------------------------------------------------- measuring


def mismatch(original: np.ndarray, decoded: Any) -> str | None:
    """Why ``decoded`` is not ``original`` bit for bit, or None: values, dtype and shape all count."""
    if not isinstance(decoded, np.ndarray):
        return f"decoder returned {type(decoded).__name__}, not an array"
    if decoded.dtype != original.dtype:
        return f"dtype {decoded.dtype}, expected {original.dtype}"
    if decoded.shape != original.shape:
        return f"shape {decoded.shape}, expected {original.shape}"
    if not np.array_equal(decoded, original):
        return f"{int(np.count_nonzero(decoded != original))} of {original.size} samples differ"
    return None


def new_row(
    image: str, codec: str, height: int | None = None, width: int | None = None, error: str | None = None
) -> Row:
    """A result row with nothing measured yet: unverified until a round trip proves otherwise."""
    row: Row = dict.fromkeys(COLUMNS)
    row.update(image=image, codec=codec, height=height, width=width, verified=False, error=error)
    return row


def timed_encode(c: Codec, pixels: np.ndarray, repeat: int) -> tuple[bytes, float]:
    """The encoded bytes and the median encode time over ``repeat`` runs."""
    times, data = [], b""
    for _ in range(repeat):
        start = time.perf_counter()
        data = c.encode(pixels)
        times.append(time.perf_counter() - start)
    return bytes(data), statistics.median(times)


def timed_decode(c: Codec, data: bytes, pixels: np.ndarray, repeat: int) -> tuple[str | None, float]:
    """The first mismatch over every decode (each repeat is a round trip too) and the median time.

    The comparison stays outside the timed region.
    """
    times, problem = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        decoded = c.decode(data)
        times.append(time.perf_counter() - start)
        problem = problem or mismatch(pixels, decoded)
    return problem, statistics.median(times)


def bench_one(c: Codec, image: str, pixels: np.ndarray, repeat: int) -> Row:
    """One image through one codec; any exception becomes the row's error so the run goes on."""
    height, width = pixels.shape[:2]
    row = new_row(image, c.name, height, width)
    try:
        data, row["encode_s"] = timed_encode(c, pixels, repeat)
        if c.details is not None:
            row.update(c.details())
        row["bytes"], row["bpsp"] = len(data), 8 * len(data) / (height * width * 3)
        problem, row["decode_s"] = timed_decode(c, data, pixels, repeat)
    except Exception as exc:  # a codec crash is a result to report, not a reason to stop
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    row["verified"] = problem is None
    row["error"] = None if problem is None else f"round trip differs: {problem}"
    return row


def bench_image(
    codecs: Sequence[Codec],
    fs: Any,
    path: str,
    name: str,
    repeat: int,
    skip: frozenset[str] = frozenset(),
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """One image (read once) through every codec not in ``skip``; an unreadable image gives one
    error row per codec. The unit of work of both the serial and the distributed run."""
    pixels, error, shape = None, None, (None, None)
    try:
        pixels = load_pixels(fs, path)
    except NotRGBError as exc:
        error, shape = str(exc), (exc.height, exc.width)
    except Exception as exc:  # unreadable, storage error: recorded, not fatal
        error = f"{type(exc).__name__}: {exc}"
    rows = []
    for c in codecs:
        if c.name in skip:
            continue
        row = bench_one(c, name, pixels, repeat) if pixels is not None else new_row(name, c.name, *shape, error)
        if on_row is not None:
            on_row(row)
        rows.append(row)
    return rows


def run(
    fs: Any,
    paths: Sequence[str],
    names: Sequence[str],
    codecs: Sequence[Codec],
    repeat: int,
    log: RowLog,
    quiet: bool = False,
) -> list[Row]:
    """Every (image, codec) pair not already in ``log.done``, in this process, with a progress bar
    (none if ``quiet``), each row logged as it is made. Returns all rows, in order."""
    from tqdm import tqdm

    codec_names = [c.name for c in codecs]
    missing = sum((n, c) not in log.done for n in names for c in codec_names)
    with tqdm(total=missing, desc="bench", unit="run", file=sys.stderr, disable=quiet) as bar:

        def on_row(row: Row) -> None:
            log.add(row)
            bar.update()

        for path, name in zip(paths, names, strict=True):
            skip = frozenset(c for c in codec_names if (name, c) in log.done)
            if len(skip) < len(codec_names):  # else not even read again
                bar.set_postfix_str(name, refresh=False)
                bench_image(codecs, fs, path, name, repeat, skip, on_row)
    return ordered(log, names, codec_names)


def ordered(log: RowLog, names: Sequence[str], codec_names: Sequence[str]) -> list[Row]:
    return [log.done[(n, c)] for n in names for c in codec_names if (n, c) in log.done]


@dataclass(frozen=True)
class BenchCodecs:
    """Builds the benchmark's codecs in a Ray worker (the models loaded once per worker)."""

    names: tuple[str, ...]
    model: str | None
    device: str
    chosen: tuple[Variant, ...]
    adapt: tuple[tuple[str, Any], ...]  # the shared adaptation flags, ``LosslessSettings`` fields

    def __call__(self, resources: Any) -> list[Codec]:
        from jobs.runtime import allow_large_images

        allow_large_images()
        setup_torch(resources.threads, self.device)
        return build_codecs(self.names, self.model, self.device, resources.threads, self.chosen, dict(self.adapt))[0]


def run_on_ray(
    fs: Any,
    paths: Sequence[str],
    names: Sequence[str],
    factory: BenchCodecs,
    codec_names: Sequence[str],
    repeat: int,
    log: RowLog,
    workers: int,
) -> list[Row]:
    """The lossless bench on Ray workers (``run_images_on_ray``); rows are logged as images
    finish. Timings then include whatever the workers share (cores, memory bandwidth): compare
    codecs within one run, not across runs with different worker counts."""
    from pipeline.progress import ProgressBar

    todo = [
        (path, name, frozenset(c for c in codec_names if (name, c) in log.done))
        for path, name in zip(paths, names, strict=True)
        if any((name, c) not in log.done for c in codec_names)
    ]
    if not todo:
        return ordered(log, names, codec_names)
    bar = ProgressBar(sum(len(codec_names) - len(skip) for _, _, skip in todo))
    made = 0

    def on_rows(rows: list[Row]) -> None:
        nonlocal made
        for row in rows:
            log.add(row)
        made += len(rows)
        bar.update(made, 0)

    def lost(task: Task, reason: str) -> list[Row]:
        return [new_row(task[1], c, error=reason) for c in codec_names if c not in task[2]]

    try:
        run_images_on_ray(todo, factory, _bench_task, (fs, repeat), lost, on_rows, workers)
    finally:
        bar.close()
    return ordered(log, names, codec_names)


def _bench_task(codecs: Sequence[Codec], path: str, name: str, skip: frozenset[str], fs: Any, repeat: int) -> list[Row]:
    return bench_image(codecs, fs, path, name, repeat, skip)


# ---------------------------------------------------------------- summary


def summarize(rows: Sequence[Row], codec_names: Sequence[str]) -> tuple[list[Row], list[str], str]:
    """Per codec: mean bpsp over the images every codec verified (so means compare like with like),
    its ratio to the reference codec's mean, median times and failures. Also the common images
    and the reference's name."""
    verified = {(r["image"], r["codec"]): r["bpsp"] for r in rows if r["verified"]}
    images = list(dict.fromkeys(r["image"] for r in rows))
    common = [i for i in images if all((i, c) in verified for c in codec_names)]
    reference = REFERENCE if REFERENCE in codec_names else codec_names[0]
    means = {c: statistics.fmean(verified[i, c] for i in common) if common else math.nan for c in codec_names}
    summary = []
    for c in codec_names:
        mine = [r for r in rows if r["codec"] == c]
        summary.append(
            {
                "codec": c,
                "mean_bpsp": means[c],
                "ratio": means[c] / means[reference] if common and means[reference] else math.nan,
                "median_encode_s": _median(r["encode_s"] for r in mine if r["verified"]),
                "median_decode_s": _median(r["decode_s"] for r in mine if r["verified"]),
                "failures": sum(not r["verified"] for r in mine),
            }
        )
    return summary, common, reference


def _median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else math.nan


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def md_table(header: Sequence[str], body: Sequence[Sequence[str]], numeric: bool = True) -> str:
    """A GitHub markdown table: first column left-aligned, the others right-aligned if ``numeric``."""
    rule = [":--"] + ["--:" if numeric else ":--"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in body]
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    """Error messages may hold pipes or newlines, which would break the table."""
    return " ".join(str(text).split()).replace("|", "\\|")


def summary_table(summary: Sequence[Row], reference: str) -> str:
    body = [
        [
            s["codec"],
            _fmt(s["mean_bpsp"], ".3f"),
            _fmt(s["ratio"], ".3f"),
            _fmt(s["median_encode_s"], ".4g"),
            _fmt(s["median_decode_s"], ".4g"),
            str(s["failures"]),
        ]
        for s in summary
    ]
    header = ["codec", "mean bpsp", f"ratio to {reference}", "median encode s", "median decode s", "failures"]
    return md_table(header, body)


def per_image_table(rows: Sequence[Row], codec_names: Sequence[str]) -> str:
    """Rows images, columns codecs, cells bpsp ("fail" where the round trip did not verify)."""
    cells = {(r["image"], r["codec"]): r for r in rows}
    body = []
    for image in dict.fromkeys(r["image"] for r in rows):
        first = cells[image, codec_names[0]]
        size = f"{first['width']}x{first['height']}" if first["width"] is not None else "?"
        body.append([image, size] + [_cell(cells[image, c]) for c in codec_names])
    return md_table(["image", "size", *codec_names], body)


def _cell(row: Row) -> str:
    return format(row["bpsp"], ".3f") if row["verified"] else "fail"


def environment(device: str, model_hash: str | None, workers: int | None = None) -> str:
    """What the times and sizes depend on: cores, threads, workers, device, model, libraries, date."""
    import torch

    libs = ", ".join(getattr(imagecodecs, f"{n}_version")() for n in ("jpegxl", "webp", "jpeg2k", "jpegls", "png"))
    gpu = f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""
    where = f"{workers} Ray workers sharing the cores" if workers else f"{torch.get_num_threads()} threads"
    return (
        f"{os.cpu_count()} CPUs, torch {torch.__version__} with {where}, "
        f"device {device}{gpu}, model sha256 {model_hash or 'n/a (callic not run)'}, "
        f"imagecodecs {imagecodecs.__version__} ({libs}), {datetime.now(UTC).isoformat(timespec='seconds')}"
    )


def report_text(rows: Sequence[Row], codec_names: Sequence[str], env: str) -> str:
    summary, common, reference = summarize(rows, codec_names)
    failed = [r for r in rows if not r["verified"]]
    parts = [
        "# callic bench: lossless bits per subpixel",
        f"Environment: {env}",
        "## bpsp per image",
        per_image_table(rows, codec_names),
        "## Summary",
        f"Mean bpsp over the {len(common)} of {len({r['image'] for r in rows})} images that every codec verified; "
        "times are medians over verified runs.",
        summary_table(summary, reference),
    ]
    timed = {r["codec"] for r in rows if any(r.get(k) is not None for k in STAGES)}
    staged = [c for c in codec_names if c in timed]  # the learned coder's stages (callic, auto)
    if staged:
        parts += [
            "## Learned encode stages",
            "Median seconds per stage over verified runs; adapters kept / images (the rest carry none).",
            stage_table(rows, staged),
        ]
    if failed:
        parts += [
            "## Failures",
            md_table(
                ["image", "codec", "error"], [[r["image"], r["codec"], r["error"]] for r in failed], numeric=False
            ),
        ]
    return "\n\n".join(parts) + "\n"


def stage_table(rows: Sequence[Row], codec_names: Sequence[str]) -> str:
    body = []
    for c in codec_names:
        mine = [r for r in rows if r["codec"] == c and r["verified"]]
        medians = [_fmt(_median(r[k] for r in mine if r[k] is not None), ".3g") for k in STAGES]
        kept = sum(r["adapters"] == "kept" for r in mine)
        body.append([c, *medians, f"{kept} / {len(mine)}"])
    return md_table(["codec", "rate estimate", "fine-tuning", "exact pass", "coding", "adapters kept"], body)


# ---------------------------------------------------------------- writing


def write_parquet(path: Path, rows: Sequence[Row]) -> None:
    """The raw results with an explicit schema, so all-null columns still get their types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("image", pa.string()),
            ("codec", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("bytes", pa.int64()),
            ("bpsp", pa.float64()),
            ("encode_s", pa.float64()),
            ("decode_s", pa.float64()),
            ("verified", pa.bool_()),
            ("error", pa.string()),
            *((stage, pa.float64()) for stage in STAGES),
            ("adapters", pa.string()),
            ("adapter_bytes", pa.int64()),
        ]
    )
    table = pa.Table.from_pylist([{k: r[k] for k in COLUMNS} for r in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_atomically(path, buf.getvalue())


def write_plot(path: Path, rows: Sequence[Row], codec_names: Sequence[str]) -> None:
    """bpsp per image, one series per codec; failed round trips are gaps, not points."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    images = list(dict.fromkeys(r["image"] for r in rows))
    cells = {(r["image"], r["codec"]): r for r in rows}
    fig = Figure(figsize=(min(40.0, max(6.0, 0.45 * len(images) + 3)), 4.8))
    ax = fig.subplots()
    x = list(range(len(images)))
    for c in codec_names:
        y = [cells[i, c]["bpsp"] if cells[i, c]["verified"] else math.nan for i in images]
        ax.plot(x, y, marker="o", markersize=4, linewidth=1, label=c)
    ax.set_xticks(x, images, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("bits per subpixel")
    ax.set_title("lossless bpsp per image (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_atomically(path, buf.getvalue())


def write_report(out: Path, rows: Sequence[Row], codec_names: Sequence[str], env: str) -> str:
    """results.parquet, bpsp.png and report.md in ``out``; returns the report's text."""
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(out / "results.parquet", rows)
    write_plot(out / "bpsp.png", rows, codec_names)
    text = report_text(rows, codec_names, env)
    write_atomically(out / "report.md", text.encode("utf-8"))
    return text


# ---------------------------------------------------------------- command line


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _int_list(text: str) -> list[int]:
    values = list(dict.fromkeys(int(v) for v in comma_list(text)))
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError("need comma-separated integers >= 0")
    return values


def _calibration_list(text: str) -> list[int]:
    values = _int_list(text)
    bad = [v for v in values if v not in CALIBRATION_SCHEMES]
    if bad:
        raise argparse.ArgumentTypeError(f"calibration schemes are {CALIBRATION_SCHEMES}, not {bad[0]}")
    return values


def _names_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    values = comma_list(text)
    if not values or set(values) - set(allowed):
        raise argparse.ArgumentTypeError(f"{what} are {', '.join(allowed)}")
    return values


def _layers_list(text: str) -> list[str]:
    return _names_list(text, ADAPT_LAYERS, "layers")


def _order_list(text: str) -> list[str]:
    from codec.rpft import ORDERS

    return _names_list(text, ORDERS, "orders")


def variants(
    steps: Sequence[int],
    orders: Sequence[str],
    calibrations: Sequence[int] = (DEFAULT_CALIBRATION,),
    layers: Sequence[str] = ("all",),
) -> list[Variant]:
    """One variant per (T, order, calibration, layers); T = 0 has no order or layers to vary."""
    return list(
        dict.fromkeys(
            Variant(t, o if t else "rate", c, la if t else "all")
            for t in steps
            for o in orders
            for la in layers
            for c in calibrations
        )
    )


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on the ``callic`` subcommands."""
    p = sub.add_parser("bench", help="lossless benchmark: callic vs JPEG XL, WebP, JPEG 2000, JPEG-LS, PNG")
    p.add_argument("input", help="folder or fsspec URL (file://..., s3://bucket/prefix), searched recursively")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary (errors still show)")
    p.add_argument("--out", default="callic-bench", help="folder for results.parquet, report.md and bpsp.png")
    p.add_argument("--storage-options", help=STORAGE_OPTIONS_HELP + " of DATA")
    p.add_argument(
        "--codecs",
        type=parse_codecs,
        default=list(CODEC_NAMES),
        help=f"comma-separated, in table order (default: {','.join(CODEC_NAMES)})",
    )
    p.add_argument("--model", help="model file for callic; default: the shipped model")
    p.add_argument("--threads", type=_positive, help="torch threads (and the anchors' numthreads)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--limit", type=_positive, help="only the first N images (in sorted order)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows an earlier run into --out finished (same settings) and run only the rest",
    )
    p.add_argument("--repeat", type=_positive, default=1, help="timing runs per image and codec; the median is kept")
    p.add_argument(
        "--steps",
        type=_int_list,
        default=[DEFAULT_STEPS],
        help=f"callic fine-tuning steps T, comma list (default {DEFAULT_STEPS}, as encode and archive; "
        f"images under {MIN_ADAPT_PIXELS} pixels are never adapted)",
    )
    p.add_argument(
        "--adapt-order", type=_order_list, default=["rate"], help="RPFT patch orders, comma list (rate,random,all)"
    )
    p.add_argument("--adapt-layers", type=_layers_list, default=["all"], help=ADAPT_LAYERS_HELP + "; comma list")
    p.add_argument(
        "--calibration",
        type=_calibration_list,
        default=[DEFAULT_CALIBRATION],
        help=f"callic calibration schemes, comma list (0: none; default {DEFAULT_CALIBRATION})",
    )
    p.add_argument(
        "--workers",
        type=_positive,
        help="run on Ray actors (the archive pipeline's machinery): N workers, each with its share of the cores",
    )
    p.add_argument("--address", help="Ray cluster to join with --workers (default: a local one)")
    lossy_help = "lossy benchmark instead: cca rate points vs JPEG, WebP, AVIF, JPEG-XL (jobs/benchlossy.py)"
    p.add_argument("--lossy", action="store_true", help=lossy_help)
    p.add_argument("--lossy-models", type=comma_list, help="cca model files, one per rate point (default: shipped)")
    add_adapt_arguments(p)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when the report is written (failures are in it), 1 if there is nothing to run."""
    if args.lossy:
        from jobs import benchlossy

        return benchlossy.main(args)
    setup_torch(args.threads, args.device)
    fs, paths, names = list_bench_images(args.input, storage_options(args.storage_options))
    paths, names = paths[: args.limit], names[: args.limit]
    if not paths:
        print(f"callic bench: no {'/'.join(sorted(SUFFIXES))} images in {args.input}", file=sys.stderr)
        return 1
    chosen = variants(args.steps, args.adapt_order, args.calibration, args.adapt_layers)
    for v in chosen:  # flags checked before any work
        adapt_config(args, v.steps, v.order, v.layers)
    adapt = adapt_fields(args)
    if args.workers:  # the workers build their own; here only the model's hash is needed
        codecs, model_hash = [], (model_file_hash(args.model) if any(map(adapts, args.codecs)) else None)
    else:
        codecs, model_hash = build_codecs(args.codecs, args.model, args.device, args.threads, chosen, adapt)
    codec_names = expand_codecs(args.codecs, chosen)
    settings = {
        "model": model_hash,
        "device": args.device,
        "threads": args.threads,
        **({"workers": args.workers} if args.workers else {}),
        "repeat": args.repeat,
        **{k: getattr(args, k) for k in ("lr", "adapt_patches", "lora_rank", "tucker_ranks", "adapt_min_pixels")},
        **({"adapt_stop_below": args.adapt_stop_below} if args.adapt_stop_below else {}),  # older runs resume
    }
    log = RowLog(Path(args.out), settings, args.resume)
    if args.workers:
        from pipeline import cluster

        cluster.connect(args.address)
        factory = BenchCodecs(tuple(args.codecs), args.model, args.device, tuple(chosen), tuple(adapt.items()))
        rows = run_on_ray(fs, paths, names, factory, codec_names, args.repeat, log, args.workers)
    else:
        rows = run(fs, paths, names, codecs, args.repeat, log, quiet=args.quiet)
    env = environment(args.device, model_hash, args.workers)
    write_report(Path(args.out), rows, codec_names, env)
    summary, common, reference = summarize(rows, codec_names)
    failures = sum(s["failures"] for s in summary)
    if failures:
        print(f"{failures} failed runs: see {Path(args.out) / 'report.md'}", file=sys.stderr)
    if not args.quiet:
        print(f"{len(paths)} images, mean bpsp over the {len(common)} that every codec verified")
        print(summary_table(summary, reference))
        print(f"results in {args.out}/ (results.parquet, report.md, bpsp.png)")
    return 0
