"""The lossless bench's outputs: the summary (mean bpsp over the images every codec verified,
ratios to the reference), the Markdown report, ``results.parquet`` and ``bpsp.png``."""

from __future__ import annotations

import io
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import imagecodecs

from jobs.atomic import write_atomically
from jobs.bench.anchors import Row
from jobs.bench.measure import COLUMNS, STAGES

REFERENCE = "jxl-e9"  # the summary's ratios are to this codec's mean (else to the first codec)


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
