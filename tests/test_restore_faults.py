"""Lost workers (issue 14, finding 9): Ray kills a restore worker or the archive's progress actor
(memory pressure, a lost node). The command carries on: a restore retries the chunk on a new
worker, then records its images as failed; an archive keeps going without its progress counts."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from jobs.archivecodec import ArchiveCodecFactory, CodecSettings
from jobs.cli import main
from pipeline import manifest, restore
from pipeline.storage import Store
from tests import corpus
from tests.processes import our_processes


def _images(root: Path, n: int) -> dict[str, str]:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return {f"img{i}.png": "pixels" for i in range(n)}


@pytest.fixture(scope="module")
def archived(ray_cluster, tmp_path_factory, tiny_model_path) -> tuple[Path, Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("faults")
    kinds = _images(root / "src", 5)
    (root / "dst").mkdir()
    args = [
        "archive",
        str(root / "src"),
        str(root / "dst"),
        "--job-id",
        "f",
        "--steps",
        "0",
        "--model",
        str(tiny_model_path),
        "--quiet",
    ]
    assert main(args) == 0
    return root / "src", root / "dst" / "f", kinds


@dataclass(frozen=True)
class _Dying:
    """A codec factory whose restore SIGKILLs its own worker process (as the kernel's or Ray's OOM
    killer would): at its ``at``-th image once per ``marker`` file, and at image ``poison`` always."""

    inner: ArchiveCodecFactory
    marker: str
    at: int = 0
    poison: str = ""

    def __call__(self, resources: Any) -> _DyingCodec:
        return _DyingCodec(self, self.inner(resources))


class _DyingCodec:
    def __init__(self, factory: _Dying, codec: Any) -> None:
        self.factory, self.codec, self.calls = factory, codec, 0

    def restore(self, blob: bytes, row: dict) -> bytes:
        self.calls += 1
        marker = Path(self.factory.marker)
        if (self.calls == self.factory.at and not marker.exists()) or row["source_key"] == self.factory.poison:
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.codec.restore(blob, row)


def _restore(job_dir: Path, out: Path, factory: Any) -> restore.RestoreSummary:
    return restore.run(Store(job_dir), Store(out), factory, None, None, 0.0, show_progress=False)


def test_restore_survives_a_killed_worker(archived, tmp_path, tiny_model_path):
    src, job_dir, kinds = archived
    out, marker = tmp_path / "out", tmp_path / "killed"
    inner = ArchiveCodecFactory(CodecSettings(model=str(tiny_model_path)))
    s = _restore(job_dir, out, _Dying(inner, str(marker), at=3))  # dies after writing two files
    assert marker.exists()
    assert (s.images, s.restored, s.failed, s.errors) == (5, 5, 0, [])
    corpus.check_restored(src, out, kinds)
    assert sorted(p.name for p in out.iterdir()) == sorted(kinds)  # no temporary left of the dead attempt


def test_restore_gives_up_on_an_image_that_keeps_killing_its_worker(archived, tmp_path, tiny_model_path):
    src, job_dir, kinds = archived
    out = tmp_path / "out"
    inner = ArchiveCodecFactory(CodecSettings(model=str(tiny_model_path)))
    s = _restore(job_dir, out, _Dying(inner, str(tmp_path / "m"), poison="img2.png"))
    assert (s.restored, s.failed) == (len(kinds) - 1, 1)  # its chunk-mates are retried without it
    assert len(s.errors) == 1
    assert s.errors[0].startswith(f"img2.png: gave up after {restore.ATTEMPTS} attempts: worker lost"), s.errors
    corpus.check_restored(src, out, {k: v for k, v in kinds.items() if k != "img2.png"})
    assert sorted(p.name for p in out.iterdir()) == sorted(k for k in kinds if k != "img2.png")


class _NoModel:
    """A codec factory that cannot build its codec, as when the model file is missing."""

    def __call__(self, resources: Any) -> Any:
        raise FileNotFoundError("model file /models/absent.safetensors not found")


def test_workers_that_cannot_start_fail_the_restore_clearly(archived, tmp_path):
    from pipeline import pool  # new in issue 14

    _, job_dir, _ = archived
    with pytest.raises(pool.WorkerStartError, match="absent.safetensors not found"):
        _restore(job_dir, tmp_path / "out", _NoModel())


def _progress_actor() -> int | None:
    """PID of the archive's progress actor (Ray names its process ``ray::_Progress...``)."""
    found = our_processes(b"ray::_Progress")
    return found[0] if found else None


def test_archive_survives_losing_its_progress_actor(ray_cluster, tmp_path, tiny_model_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    kinds = _images(src, 4)
    dst.mkdir()
    result: dict[str, Any] = {}
    args = [
        "archive",
        str(src),
        str(dst),
        "--job-id",
        "p",
        "--steps",
        "0",
        "--shard-size",
        "1",
        "--model",
        str(tiny_model_path),
    ]

    def archive() -> None:
        try:
            result["rc"] = main(args)
        except BaseException as exc:  # what the test must never see
            result["error"] = exc

    runner = threading.Thread(target=archive)
    runner.start()
    deadline, victim = time.time() + 120, None
    while victim is None and time.time() < deadline and runner.is_alive():
        victim = _progress_actor()
        time.sleep(0.02)
    assert victim is not None, "no progress actor found"
    os.kill(victim, signal.SIGKILL)
    runner.join(300)
    assert result == {"rc": 0}
    rows = manifest.load(Store(dst / "p")).to_pylist()
    assert sorted(r["source_key"] for r in rows) == sorted(kinds) and {r["status"] for r in rows} == {"ok"}
