"""Self-contained jobs (issue 19, item 2): a job folder keeps a copy of every model it codes with,
and restores from it where no installation has that model, checked by hash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from codec.container import FORMAT_VERSION
from codec.mgcf.config import MGCFConfig
from codec.mgcf.weights import save_model
from jobs.cli import main
from tests.conftest import make_model

REPO = Path(__file__).resolve().parents[1]
FIXTURE_JOBS = REPO / "tests" / "fixtures" / "jobs" / "2026-12-03" / "archive"


def _images(root: Path, n: int = 3) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:24, 0:28]
    out = {}
    for i in range(n):
        px = ((x * (i + 2) + y * 3)[..., None] + rng.integers(0, 12, (24, 28, 3))).astype(np.uint8)
        Image.fromarray(px).save(root / f"img{i}.png")
        out[f"img{i}.png"] = px
    return out


def _private_model(where: Path, seed: int) -> Path:
    """A model no search path holds (not in $CALLIC_MODEL_PATH, not shipped)."""
    return save_model(make_model(MGCFConfig.tiny(), seed=seed), where)


def _archive(src: Path, dst: Path, model: Path, job_id: str) -> None:
    args = ["archive", str(src), str(dst), "--job-id", job_id, "--codec", "callic", "--steps", "0"]
    assert main([*args, "--model", str(model), "--quiet"]) == 0


def _check(out: Path, images: dict[str, np.ndarray]) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(images)
    for name, px in images.items():
        got = np.asarray(Image.open(out / name))
        assert got.dtype == px.dtype and got.shape == px.shape and np.array_equal(got, px)


def test_a_job_copied_elsewhere_restores_in_a_fresh_process_with_none_of_its_models_installed(ray_cluster, tmp_path):
    images = _images(tmp_path / "src")
    model = _private_model(tmp_path / "private", seed=11)
    _archive(tmp_path / "src", tmp_path / "dst", model, "j")
    spec = json.loads((tmp_path / "dst" / "j" / "job.json").read_text())
    digest = spec["models"]["model"]
    copy = tmp_path / "dst" / "j" / "models" / f"{digest}.safetensors"
    assert copy.read_bytes() == model.read_bytes() and spec["format_version"] == FORMAT_VERSION

    model.unlink()  # the model is gone from this machine...
    shutil.copytree(tmp_path / "dst" / "j", tmp_path / "elsewhere" / "j")  # ...and the job moved
    shutil.rmtree(tmp_path / "dst")
    home, empty = tmp_path / "home", tmp_path / "no-models"
    home.mkdir()
    empty.mkdir()
    env = {**os.environ, "HOME": str(home), "CALLIC_MODEL_PATH": str(empty), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.cli", "restore", str(tmp_path / "elsewhere" / "j"), str(out), "--quiet"]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _check(out, images)


def test_a_tampered_job_copy_is_refused_by_hash_and_nothing_is_written(ray_cluster, tmp_path, capsys):
    _images(tmp_path / "src", n=2)
    model = _private_model(tmp_path / "private", seed=12)
    _archive(tmp_path / "src", tmp_path / "dst", model, "t")
    model.unlink()
    (copy,) = (tmp_path / "dst" / "t" / "models").iterdir()
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x40
    copy.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["restore", str(tmp_path / "dst" / "t"), str(tmp_path / "out"), "--quiet"]) == 10
    err = capsys.readouterr().err
    assert "is not installed" in err and "its hash is" in err and copy.name in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_resuming_a_job_from_before_model_copies_gives_it_its_copies(ray_cluster, tmp_path):
    job = tmp_path / "archive" / "files"
    shutil.copytree(FIXTURE_JOBS / "files", job)
    assert not (job / "models").exists()
    assert main(["resume", str(job), "--quiet"]) == 0  # complete already: nothing to code
    spec = json.loads((job / "job.json").read_text())
    assert sorted(p.name for p in (job / "models").iterdir()) == [f"{h}.safetensors" for h in spec["models"].values()]
