"""``status`` and ``resume`` tell permanent failures (the input itself) from retryable ones
(storage, timeouts, lost workers); sizes are reported in each kind's unit (issue 15)."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import main
from pipeline import driver, job, manifest, status
from pipeline.storage import Store
from tests import corpus


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _status(job_dir: Path, capsys) -> tuple[dict, str]:
    capsys.readouterr()
    assert main(["status", str(job_dir), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert main(["status", str(job_dir)]) == 0
    return st, capsys.readouterr().out


def _attempts(job_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """Every attempt of every image, in order: {key: [(attempt, status), ...]}."""
    out: dict[str, list[tuple[int, str]]] = {}
    for r in sorted(manifest.read_all(Store(job_dir)).to_pylist(), key=lambda r: (r["source_key"], r["attempt"])):
        out.setdefault(r["source_key"], []).append((r["attempt"], r["status"]))
    return out


def _counts(st: dict) -> tuple[int, ...]:
    keys = ("ok", "failed", "failed_permanent", "failed_retryable", "failed_out_of_attempts", "pending")
    return tuple(st[k] for k in keys)


def test_resume_skips_permanent_failures_unless_asked(ray_cluster, tmp_path, tiny_model_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (dst / "j").mkdir(parents=True)
    (src / "good.png").write_bytes(_png(1))
    whole = _png(2)
    (src / "truncated.png").write_bytes(whole[: len(whole) // 2])  # permanent: the file is cut
    (src / "text.png").write_text("not an image\n")  # permanent: not an image at all
    # A storage failure: the job's objects/ folder cannot be made (a file is in its way), so the
    # good image's write fails with a StorageError, as on a full disk or a refused bucket.
    (dst / "j" / "objects").write_bytes(b"")
    job_dir = dst / "j"
    common = ("--model", str(tiny_model_path), "--quiet")
    assert main(["archive", str(src), str(dst), "--job-id", "j", "--steps", "0", "--max-attempts", "2", *common]) == 10

    st, text = _status(job_dir, capsys)
    assert _counts(st) == (0, 3, 2, 1, 0, 0) and st["complete"]
    assert "complete, 3 failed (2 permanent, 1 retryable)" in text and "complete: yes" not in text
    rows = {r["source_key"]: r for r in manifest.load(Store(job_dir)).to_pylist()}
    assert {k: r["retryable"] for k, r in rows.items()} == {"good.png": True, "text.png": False, "truncated.png": False}
    assert rows["good.png"]["error"].startswith("StorageError")

    # resume retries only the storage failure, up to --max-attempts (2).
    assert main(["resume", str(job_dir), "--quiet"]) == 10
    assert _attempts(job_dir) == {
        "good.png": [(1, "failed"), (2, "failed")],
        "text.png": [(1, "failed")],
        "truncated.png": [(1, "failed")],
    }
    st, text = _status(job_dir, capsys)
    assert _counts(st) == (0, 3, 2, 0, 1, 0)
    assert "1 out of attempts" in text and "--retry-failed" in text
    files = sorted(p.name for p in (job_dir / "manifest").iterdir())
    assert main(["resume", str(job_dir), "--quiet"]) == 10  # nothing left that resume retries
    assert sorted(p.name for p in (job_dir / "manifest").iterdir()) == files

    # The storage is fixed and so is one file: --retry-failed tries every failed image once more.
    (job_dir / "objects").unlink()
    (src / "truncated.png").write_bytes(whole)
    assert main(["resume", str(job_dir), "--retry-failed", "--quiet"]) == 10  # text.png still fails
    attempts = _attempts(job_dir)
    assert attempts["good.png"][-1] == (3, "ok") and attempts["truncated.png"][-1] == (2, "ok")
    assert attempts["text.png"] == [(1, "failed"), (2, "failed")]
    st, text = _status(job_dir, capsys)
    assert _counts(st) == (2, 1, 1, 0, 0, 0)
    assert "complete, 1 failed (1 permanent)" in text
    (name,) = st["codecs"]  # callic or jxl-lossless, whichever is smaller (--codec auto)
    assert st["codecs"][name] == 2 and f"codecs: {name} 2\n" in text and "{" not in text  # not a Python dict

    out = tmp_path / "out"
    assert main(["restore", str(job_dir), str(out), *common]) == 0
    corpus.check_restored(src, out, {"good.png": "pixels", "truncated.png": "pixels", "text.png": "fail"})


def _spec(n: int) -> job.JobSpec:
    return job.JobSpec("old", "/src", "/dst", {}, 8, False, True, 3, "m" * 64, "0", n_images=n, n_shards=1)


OLD_COLUMNS = [c for c in manifest.COLUMNS if c not in ("retryable", "bpp", "psnr")]  # the schema before issue 15


def _old_manifest(job_store: Store, rows: list[dict]) -> None:
    """A shard file as versions before issue 15 wrote it: no retryable, bpp or psnr column."""
    schema = pa.schema([manifest.SCHEMA.field(c) for c in OLD_COLUMNS])
    table = pa.Table.from_pylist([{c: r.get(c) for c in OLD_COLUMNS} for r in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    job_store.write_once("manifest/shard-000000-0ld.parquet", buf.getvalue())


def test_old_manifests_load_and_their_failures_are_classified_from_the_error(tmp_path, capsys):
    keys = ["a.png", "cut.png", "big.png", "slow.png", "gone.png", "lost.png"]
    store = Store(tmp_path / "old")
    spec = job.create(store, _spec(len(keys)), job.shards_table([(k, 10) for k in keys], 8))
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    base = {"job": "old", "shard": 0, "attempt": 1, "time": now, "status": "failed"}
    _old_manifest(
        store,
        [
            {
                **base,
                "source_key": "a.png",
                "status": "ok",
                "codec": "callic",
                "source_bytes": 10,
                "compressed_bytes": 6,
                "raw_bytes": 48,
                "bit_depth": 8,
                "width": 4,
                "height": 4,
                "bpsp": 1.0,
            },
            {**base, "source_key": "cut.png", "error": "ImageReadError: cannot read image cut.png: truncated"},
            {**base, "source_key": "big.png", "error": "SourceError: /src/big.png: 9 bytes, over the 8-byte limit"},
            {**base, "source_key": "slow.png", "error": "SourceError: s3://b/slow.png: no answer within 300 s"},
            {**base, "source_key": "gone.png", "error": "StorageError: read s3://b/gone.png failed: OSError: reset"},
            {**base, "source_key": "lost.png", "error": "gave up after 3 attempts: worker died"},
        ],
    )
    rows = {r["source_key"]: r for r in manifest.load(store).to_pylist()}
    assert {k: r["retryable"] for k, r in rows.items()} == {
        "a.png": None,
        "cut.png": False,
        "big.png": False,
        "slow.png": True,
        "gone.png": True,
        "lost.png": True,
    }
    assert rows["a.png"]["bpp"] is None and rows["a.png"]["psnr"] is None
    tasks = driver.pending_tasks(spec, job.load(store)[1], manifest.read_all(store))
    assert [sorted(t.keys) for t in tasks] == [["gone.png", "lost.png", "slow.png"]]
    tasks = driver.pending_tasks(spec, job.load(store)[1], manifest.read_all(store), retry_failed=True)
    assert [sorted(t.keys) for t in tasks] == [["big.png", "cut.png", "gone.png", "lost.png", "slow.png"]]
    st = status.job_status(store)
    assert _counts(st) == (1, 5, 2, 3, 0, 0)
    capsys.readouterr()
    assert main(["status", str(tmp_path / "old")]) == 0
    assert "complete, 5 failed (2 permanent, 3 retryable)" in capsys.readouterr().out


def test_a_job_not_done_says_so(tmp_path, capsys):
    store = Store(tmp_path / "half")
    job.create(store, _spec(3), job.shards_table([("a.png", 1), ("b.png", 1), ("c.png", 1)], 8))
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    manifest.write_shard(
        store,
        0,
        "t",
        [
            {
                "job": "old",
                "shard": 0,
                "source_key": "a.png",
                "status": "ok",
                "attempt": 1,
                "time": now,
                "codec": "callic",
            }
        ],
    )
    capsys.readouterr()
    assert main(["status", str(tmp_path / "half")]) == 0
    assert "not complete: 2 not done, run `callic resume`" in capsys.readouterr().out


def test_lossy_and_lossless_sizes_in_their_own_units(tmp_path, capsys):
    store = Store(tmp_path / "mixed")
    job.create(store, _spec(3), job.shards_table([("a.png", 1), ("b.png", 1), ("c.png", 1)], 8))
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    base = {"job": "old", "shard": 0, "status": "ok", "attempt": 1, "time": now, "width": 10, "height": 20}
    manifest.write_shard(
        store,
        0,
        "t",
        [
            {
                **base,
                "source_key": "a.png",
                "codec": "callic",
                "source_bytes": 500,
                "compressed_bytes": 300,
                "raw_bytes": 600,
                "bit_depth": 8,
                "bpsp": 4.0,
            },
            {
                **base,
                "source_key": "b.png",
                "codec": "cca",
                "source_bytes": 500,
                "compressed_bytes": 50,
                "raw_bytes": 600,
                "bit_depth": 8,
                "bpp": 2.0,
                "psnr": 30.0,
            },
            {
                **base,
                "source_key": "c.png",
                "codec": "cca",
                "source_bytes": 500,
                "compressed_bytes": 25,
                "raw_bytes": 600,
                "bit_depth": 8,
                "bpp": 1.0,
                "psnr": 26.0,
            },
        ],
    )
    st = status.job_status(store)
    assert st["lossless"] == {"images": 1, "source_bytes": 500, "stored_bytes": 300, "bpsp": 4.0}
    assert st["lossy"] == {"images": 2, "source_bytes": 1000, "stored_bytes": 75, "bpp": 1.5, "psnr_mean": 28.0}
    assert (st["source_bytes"], st["stored_bytes"]) == (1500, 375)
    capsys.readouterr()
    assert main(["status", str(tmp_path / "mixed")]) == 0
    text = capsys.readouterr().out
    assert "lossless: 1 images, 500 -> 300 bytes (60.0% of the source), 4.000 bpsp" in text
    assert "lossy: 2 images, 1000 -> 75 bytes, 1.500 bpp, PSNR 28.00 dB (mean)" in text
    assert "codecs: cca 2, callic 1" in text


def test_lossy_rows_get_bits_per_pixel_and_psnr(tiny_model_path, tiny_lossy_model_path):
    from codec.api import decode
    from jobs.archivecodec import ArchiveCodec, CodecSettings
    from jobs.bench.quality import psnr
    from pipeline.items import Resources

    settings = CodecSettings(codec="cca", model=str(tiny_model_path), lossy_model=str(tiny_lossy_model_path))
    coder = ArchiveCodec(settings, Resources("cpu", 1))
    data = _png(3)
    enc = coder.encode_batch([("a.png", data)], verify=True)[0]
    assert enc.fields["codec"] == "cca" and enc.fields["bpsp"] is None
    assert enc.fields["bpp"] == pytest.approx(8 * len(enc.blob) / (16 * 16))
    source = np.asarray(Image.open(io.BytesIO(data)))
    recon = decode(enc.blob, model=coder.encoder.model).pixels
    assert recon.shape == source.shape and recon.dtype == source.dtype
    assert enc.fields["psnr"] == pytest.approx(psnr(source, recon)) and 0 < enc.fields["psnr"] < 100
