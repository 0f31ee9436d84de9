"""``callic bench``: every round trip verified, failures recorded without stopping the run."""

import json
import math

import imagecodecs
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import codec
from jobs import cli
from jobs.bench import anchors, measure, runners
from jobs.bench import codecs as bench_codecs
from tests.conftest import SAMPLES

ANCHORS = "jxl-e7,png"  # the fast ones, for the tests that are not about codec coverage


def _bench(*argv: str) -> int:
    """Run ``callic bench`` as the command line does."""
    return cli.main(["bench", *argv, "--threads", "1"])


@pytest.fixture
def images(tmp_path):
    """Two small natural RGB crops, one of them in a subfolder (the listing is recursive)."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    kodim = np.asarray(Image.open(SAMPLES / "kodim23-crop.png").convert("RGB"))
    chelsea = np.asarray(Image.open(SAMPLES / "chelsea-crop.png").convert("RGB"))
    Image.fromarray(kodim[30:70, 40:88]).save(folder / "a-kodim.png")
    Image.fromarray(chelsea[20:60, 30:78]).save(folder / "sub" / "b-chelsea.png")
    return folder


def _rows(out):
    return pq.read_table(out / "results.parquet").to_pylist()


def test_all_codecs_verified_and_reported(images, tmp_path, tiny_model_path, tiny_model, capsys):
    out = tmp_path / "out"
    assert _bench(str(images), "--out", str(out), "--model", str(tiny_model_path), "--steps", "0") == 0
    rows = _rows(out)
    assert [(r["image"], r["codec"]) for r in rows] == [
        (image, c) for image in ("a-kodim.png", "sub/b-chelsea.png") for c in bench_codecs.CODEC_NAMES
    ]
    for r in rows:
        assert r["verified"] and r["error"] is None, r
        assert (r["width"], r["height"]) == (48, 40)
        assert r["bytes"] > 0 and math.isfinite(r["bpsp"]) and r["bpsp"] > 0
        assert r["codec"] == "callic" or r["bpsp"] < 8  # the tiny test model is random: no bound for callic
        assert r["bpsp"] == pytest.approx(8 * r["bytes"] / (48 * 40 * 3))
        assert r["encode_s"] >= 0 and r["decode_s"] >= 0
    first = np.asarray(Image.open(images / "a-kodim.png"))
    # The whole .cllc file of the learned coder (bench never swaps JPEG-XL's in).
    assert rows[0]["bytes"] == len(codec.encode(first, model=tiny_model, adapt=None, coder="learned"))
    report = (out / "report.md").read_text()
    for name in bench_codecs.CODEC_NAMES:
        assert f"| {name} |" in report
    assert "ratio to jxl-e9" in report and "| jxl-e9 | " in report
    assert tiny_model_path.name[5:21] in report  # the model's hash is in the environment line
    with Image.open(out / "bpsp.png") as im:
        im.load()
        assert im.format == "PNG" and im.width > 100
    assert "ratio to jxl-e9" in capsys.readouterr().out
    assert not list(out.glob(".*.part"))


def test_failed_round_trip_is_recorded(images, tmp_path, monkeypatch):
    real = imagecodecs.png_decode

    def corrupting_decode(data, **kwargs):
        pixels = real(data, **kwargs).copy()
        pixels[0, 0, 0] ^= 1
        return pixels

    monkeypatch.setattr(imagecodecs, "png_decode", corrupting_decode)
    out = tmp_path / "out"
    assert _bench(str(images), "--out", str(out), "--codecs", ANCHORS, "--repeat", "2") == 0
    rows = _rows(out)
    assert len(rows) == 4
    for r in rows:
        if r["codec"] == "png":
            assert r["verified"] is False and "round trip differs" in r["error"] and r["bytes"] > 0
        else:
            assert r["verified"] is True and r["error"] is None
    report = (out / "report.md").read_text()
    assert "| png | n/a | n/a |" in report  # no image verified by every codec: no mean to compare
    assert "1 of 5760 samples differ" in report


def test_mismatch_checks_values_dtype_and_shape():
    a = np.zeros((2, 3, 3), np.uint8)
    assert measure.mismatch(a, a.copy()) is None
    assert "dtype" in measure.mismatch(a, a.astype(np.uint16))
    assert "shape" in measure.mismatch(a, a.reshape(3, 2, 3))
    assert "not an array" in measure.mismatch(a, a.tobytes())


def test_bad_files_give_error_rows(images, tmp_path):
    (images / "c-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(images / "d-gray.png")
    (images / "notes.txt").write_text("not listed: not an image suffix")
    out = tmp_path / "out"
    assert _bench(str(images), "--out", str(out), "--codecs", ANCHORS) == 0
    rows = {(r["image"], r["codec"]): r for r in _rows(out)}
    assert len(rows) == 8
    for c in ("jxl-e7", "png"):
        assert rows["c-corrupt.png", c]["verified"] is False
        assert "ImageReadError" in rows["c-corrupt.png", c]["error"]
        gray = rows["d-gray.png", c]
        assert gray["verified"] is False and gray["error"].startswith("not 8-bit RGB")
        assert (gray["width"], gray["height"]) == (9, 8)
        assert rows["a-kodim.png", c]["verified"] and rows["sub/b-chelsea.png", c]["verified"]
    report = (out / "report.md").read_text()
    assert "over the 2 of 4 images" in report


def test_file_url_input(images, tmp_path):
    out = tmp_path / "out"
    assert _bench(images.as_uri(), "--out", str(out), "--codecs", "png", "--limit", "1") == 0
    rows = _rows(out)
    assert [(r["image"], r["codec"], r["verified"]) for r in rows] == [("a-kodim.png", "png", True)]


def test_usage_errors(tmp_path):
    assert _bench(str(tmp_path), "--codecs", "png,gif") == cli.EXIT_USAGE
    assert _bench(str(tmp_path / "missing"), "--codecs", "png") == 1
    assert _bench(str(tmp_path), "--codecs", "png", "--out", str(tmp_path / "out")) == 1  # no images


def test_adaptation_variants_have_their_own_rows_and_stage_times(images, tmp_path, tiny_model_path):
    out = tmp_path / "out"
    argv = ("--out", str(out), "--model", str(tiny_model_path), "--codecs", "callic,png")
    small = ("--adapt-min-pixels", "0")  # the crops are under MIN_ADAPT_PIXELS
    variants = ("--steps", "0,3", "--adapt-order", "rate,all", "--adapt-layers", "all,head")
    assert _bench(str(images), *argv, *variants, "--lr", "1e-2", *small) == 0
    rows = _rows(out)
    names = ["callic", "callic-t3", "callic-t3-head", "callic-t3-all", "callic-t3-all-head", "png"]
    assert [r["codec"] for r in rows] == names * 2
    for r in rows:
        assert r["verified"], r
        if r["codec"] == "callic":
            assert r["fine_tune_s"] is None and r["adapters"] == "none" and r["exact_pass_s"] > 0
        elif r["codec"].startswith("callic-"):
            assert r["fine_tune_s"] > 0 and r["rate_estimate_s"] > 0 and r["adapters"] in ("kept", "dropped")
            assert r["adapter_bytes"] > 0
    report = (out / "report.md").read_text()
    assert "## Learned encode stages" in report and "| callic-t3-all |" in report


def test_every_adapting_registry_codec_gets_the_variants(images, tmp_path, tiny_model_path):
    """``auto`` adapts as ``callic`` does (its settings take ``steps``): one column per variant,
    each what ``callic archive --codec auto --steps T`` would store; png has none."""
    out = tmp_path / "out"
    argv = ("--out", str(out), "--model", str(tiny_model_path), "--codecs", "auto,png", "--adapt-min-pixels", "0")
    assert _bench(str(images), *argv, "--steps", "0,2", "--calibration", "1,0") == 0
    rows = _rows(out)
    assert [r["codec"] for r in rows[:5]] == ["auto", "auto-cal0", "auto-t2", "auto-t2-cal0", "png"]
    assert all(r["verified"] and r["bytes"] > 0 for r in rows)


def test_resume_keeps_finished_rows_and_runs_the_rest(images, tmp_path):
    out = tmp_path / "out"
    argv = (str(images), "--out", str(out), "--codecs", ANCHORS)
    assert _bench(*argv) == 0
    log = out / "rows.jsonl"
    settings, first, *rest = log.read_text().splitlines()
    assert len(rest) == 3 and '"settings"' in settings
    kept = json.loads(first)
    kept["encode_s"] = 12345.0  # marks the row, to tell a kept row from a run again
    log.write_text(f"{settings}\n{json.dumps(kept)}\n{rest[0][:25]}")  # a run killed while writing its 2nd row

    assert _bench(*argv, "--repeat", "2", "--resume") == 64  # other settings: refused, nothing lost
    assert json.loads(log.read_text().splitlines()[1])["encode_s"] == 12345.0

    assert _bench(*argv, "--resume") == 0
    rows = _rows(out)
    assert [(r["image"], r["codec"]) for r in rows] == [
        (json.loads(x)["image"], json.loads(x)["codec"]) for x in [first, *rest]
    ]
    assert all(r["verified"] for r in rows)
    assert [r["encode_s"] == 12345.0 for r in rows] == [True, False, False, False]
    assert len(log.read_text().splitlines()) == 5  # settings + 4 rows, the torn line gone

    assert _bench(*argv) == 0  # without --resume: a fresh run
    assert all(r["encode_s"] < 12345.0 for r in _rows(out))


def test_bench_on_ray_workers_matches_the_serial_run(images, tmp_path, tiny_model_path):
    """``--workers``: the same rows through Ray actors (the archive pipeline's machinery), and
    the same sizes as in this process (every codec here is deterministic)."""
    import ray

    argv = [str(images), "--codecs", "callic,png", "--steps", "0,2", "--model", str(tiny_model_path)]
    assert _bench(*argv, "--out", str(tmp_path / "serial")) == 0
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        assert cli.main(["bench", *argv, "--out", str(tmp_path / "ray"), "--workers", "2"]) == 0
    finally:
        ray.shutdown()
    serial, distributed = _rows(tmp_path / "serial"), _rows(tmp_path / "ray")
    key = [(r["image"], r["codec"]) for r in serial]
    assert key == [(r["image"], r["codec"]) for r in distributed] and len(key) == 6
    assert all(r["verified"] for r in distributed)
    sizes = {(r["image"], r["codec"]): r["bytes"] for r in serial if r["codec"] != "callic-t2"}
    assert sizes == {(r["image"], r["codec"]): r["bytes"] for r in distributed if r["codec"] != "callic-t2"}
    assert "2 Ray workers" in (tmp_path / "ray" / "report.md").read_text()


class _KillingBench:
    """Bench codecs for a Ray worker: png, whose encoder SIGKILLs its own worker process on the
    image whose samples sum to ``poison`` (as a native crash or the OOM killer would)."""

    device = "cpu"

    def __init__(self, poison: int) -> None:
        self.poison = poison

    def __call__(self, resources):
        import os
        import signal

        (png,) = bench_codecs.build_codecs(["png"], None, "cpu", 1)[0]
        poison = self.poison

        def encode(pixels):
            if int(pixels.sum(dtype=np.int64)) == poison:
                os.kill(os.getpid(), signal.SIGKILL)
            return png.encode(pixels)

        return [anchors.Codec(png.name, encode, png.decode)]


def test_bench_on_ray_records_an_image_that_kills_its_worker_and_goes_on(images, tmp_path):
    """An image whose worker dies is retried once on a fresh worker (``pipeline.pool``), then
    gets an error row; the other image is still measured and verified."""
    import fsspec
    import ray

    from jobs.bench.rowlog import RowLog

    paths = sorted(str(p) for p in images.rglob("*.png"))
    names = [p.rsplit("/", 1)[-1] for p in paths]
    poison = int(np.asarray(Image.open(images / "a-kodim.png")).sum(dtype=np.int64))
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        log = RowLog(tmp_path / "out", {}, resume=False)
        rows = runners.run_on_ray(
            fsspec.filesystem("file"), paths, names, _KillingBench(poison), ["png"], 1, log, workers=1
        )
    finally:
        ray.shutdown()
    by_image = {r["image"]: r for r in rows}
    assert sorted(by_image) == sorted(names) and len(rows) == 2
    killer, other = by_image["a-kodim.png"], by_image["b-chelsea.png"]
    assert killer["error"].startswith(f"gave up after {runners.RAY_ATTEMPTS} attempts: worker lost"), killer
    assert not killer["verified"] and killer["bytes"] is None
    assert other["verified"] and other["error"] is None and other["bytes"] > 0
