"""Feedback on long phases (issue 15): archive and restore bars move per image, not per shard or
chunk; with ``--log-json`` stderr holds JSON lines only (no bar, no Ray or worker output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from PIL import Image

from jobs.archivecodec import ArchiveCodecFactory, CodecSettings
from pipeline import cluster, driver, job, manifest, progress, restore
from pipeline.storage import Store
from tests import corpus

REPO = Path(__file__).resolve().parents[1]
SLOW_S = 1.3  # per image: longer than the driver's one-second poll, so each image is seen


def _images(root: Path, n: int) -> dict[str, str]:
    root.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return {f"img{i}.png": "pixels" for i in range(n)}


@dataclass(frozen=True)
class _Slow:
    """A codec factory whose codec takes ``SLOW_S`` per image, archiving and restoring."""

    inner: ArchiveCodecFactory

    def __call__(self, resources: Any) -> _SlowCodec:
        return _SlowCodec(self.inner(resources))


class _SlowCodec:
    def __init__(self, codec: Any) -> None:
        self.codec, self.batch_size = codec, 1

    def encode_batch(self, items: list, verify: bool) -> list:
        time.sleep(SLOW_S)
        return self.codec.encode_batch(items, verify)

    def restore(self, blob: bytes, row: dict) -> bytes:
        time.sleep(SLOW_S)
        return self.codec.restore(blob, row)


@pytest.fixture
def bar_counts(monkeypatch) -> list[int]:
    """Every ``done`` count the progress bar was asked to show, in order."""
    seen: list[int] = []
    update = progress.ProgressBar.update

    def spy(self, ok: int, failed: int) -> None:
        seen.append(ok + failed)
        update(self, ok, failed)

    monkeypatch.setattr(progress.ProgressBar, "update", spy)
    return seen


def _archive(src: Path, dst: Path, factory: Any, n: int) -> None:
    """One shard of all ``n`` images, through the driver."""
    src_store, items = job.list_sources(str(src), {}, (".png",))
    spec = job.JobSpec("p", str(src), str(dst), {}, n, False, True, 3, "m" * 64, "0", n_images=n, n_shards=1)
    job_store = Store(dst / "p")
    spec = job.create(job_store, spec, job.shards_table(items, n))
    tasks = driver.pending_tasks(spec, job.load(job_store)[1], manifest.read_all(job_store))
    summary = driver.run(spec, src_store, job_store, factory, tasks, 1, 0.0, show_progress=True)
    assert (summary.ok, summary.failed) == (n, 0)
    driver.finish(job_store)


def test_archive_and_restore_bars_move_per_image(ray_cluster, tmp_path, tiny_model_path, bar_counts):
    n = 4
    kinds = _images(tmp_path / "src", n)
    (tmp_path / "dst").mkdir()
    factory = _Slow(ArchiveCodecFactory(CodecSettings(model=str(tiny_model_path))))
    _archive(tmp_path / "src", tmp_path / "dst", factory, n)
    # One shard of 4 images, seen image by image (two of the three steps at least: a poll on a
    # loaded machine may come late).
    assert len({1, 2, 3} & set(bar_counts)) >= 2 and bar_counts[-1] == n
    bar_counts.clear()
    s = restore.run(Store(tmp_path / "dst" / "p"), Store(tmp_path / "out"), factory, None, 1, 0.0)
    assert (s.restored, s.failed) == (n, 0)
    assert n <= restore.CHUNK  # one chunk: only per-image counts can show 1, 2, 3
    assert len({1, 2, 3} & set(bar_counts)) >= 2 and bar_counts[-1] == n
    corpus.check_restored(tmp_path / "src", tmp_path / "out", kinds)


def test_log_json_keeps_worker_output_off_the_driver(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    cluster.connect(None, log_json=True)
    cluster.connect(None)
    assert [c["log_to_driver"] for c in calls] == [False, True]


def test_log_json_stderr_is_json_lines_only(tmp_path, tiny_model_path):
    """archive and restore in one process that starts its own Ray, as a user's run does."""
    kinds = _images(tmp_path / "src", 3)
    (tmp_path / "src" / "notes.png").write_text("not an image\n")  # a failure: its report must be JSON too
    (tmp_path / "dst").mkdir()
    model, src, dst, out = str(tiny_model_path), str(tmp_path / "src"), str(tmp_path / "dst"), str(tmp_path / "out")
    script = (
        "import sys\nfrom jobs.cli import main\n"
        f"a = main(['archive', {src!r}, {dst!r}, '--job-id', 'j', '--steps', '0', '--model', {model!r},"
        " '--log-json'])\n"
        f"r = main(['restore', {dst + '/j'!r}, {out!r}, '--model', {model!r}, '--log-json'])\n"
        "sys.exit(10 * a + r)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", script]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 100, proc.stderr  # archive 10 (one failed image), restore 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    for line in lines:
        assert isinstance(json.loads(line), dict), line  # no bar, no Ray banner, no worker output
    found = [json.loads(line)["event"] for line in lines]
    assert {"job_created", "job_run", "shard_done", "image_failed", "restore_run"} <= set(found)
    assert "\r" not in proc.stderr
    corpus.check_restored(tmp_path / "src", tmp_path / "out", kinds)


def test_log_json_errors_are_json_lines_too(tmp_path, capsys):
    from jobs.cli import main

    rc = main(["archive", str(tmp_path / "missing"), str(tmp_path), "--log-json"])
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert rc != 0 and lines and lines[-1]["event"] == "error" and lines[-1]["exit_code"] == rc
    assert "missing" in lines[-1]["message"]
