"""``bench/device_tree.py``: the model files a GPU session does not read leave git's index for the
device call and come back exactly, and nothing else in the checkout changes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from bench import device_tree, gpu_tools

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
RATE_POINTS = {"cca-aaaa.safetensors": 0.3, "cca-bbbb.safetensors": 1.0, "cca-cccc.safetensors": 8.0}
MODEL_BYTES = 200_000


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout shaped like ours: a default MGCF model, an old one, three rate points listed in CCA."""
    repo = tmp_path / "repo"
    models = repo / "codec" / "models"
    models.mkdir(parents=True)
    blob = {"w": np.arange(MODEL_BYTES // 4, dtype=np.float32)}
    for name in ("mgcf-new.safetensors", "mgcf-old.safetensors"):
        save_file(blob, str(models / name))
    for name, lmbda in RATE_POINTS.items():
        save_file(blob, str(models / name), metadata={"lmbda": str(lmbda)})
    (models / "DEFAULT").write_text("mgcf-new.safetensors\n")
    (models / "CCA").write_text("".join(f"{n}\n" for n in RATE_POINTS))
    (repo / "README.md").write_text("hi\n")
    git(tmp_path, "init", "-q", str(repo))
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("# mine\n/scratch/\n")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return repo


def tracked(repo: Path) -> set[str]:
    return set(git(repo, "ls-files").split())


def test_slim_keeps_only_what_the_session_reads_and_restore_puts_everything_back(repo: Path) -> None:
    before_tracked, before_bytes = tracked(repo), gpu_tools.travel_bytes(repo, [])["tree"]
    exclude = repo / ".git" / "info" / "exclude"
    exclude_before = exclude.read_text()

    removed = device_tree.slim(repo)
    assert sorted(removed) == sorted(f"codec/models/{n}" for n in [*RATE_POINTS, "mgcf-old.safetensors"])
    assert tracked(repo) == before_tracked - set(removed)
    assert all((repo / n).is_file() for n in removed)  # still on disk
    # Neither tracked nor untracked-not-ignored: they do not travel.
    assert git(repo, "ls-files", "--others", "--exclude-standard") == ""
    assert gpu_tools.travel_bytes(repo, [])["tree"] <= before_bytes - 4 * MODEL_BYTES
    assert exclude.read_text().startswith(exclude_before)

    # A cca session at lambda 1 also needs that rate point; a second slim brings it back.
    removed = device_tree.slim(repo, "cca", 1.0)
    assert "codec/models/cca-bbbb.safetensors" in tracked(repo)
    assert "codec/models/cca-bbbb.safetensors" not in removed and len(removed) == 3

    assert sorted(device_tree.restore(repo)) == sorted(removed)
    assert tracked(repo) == before_tracked
    assert git(repo, "status", "--porcelain") == ""
    assert exclude.read_text() == exclude_before
    assert device_tree.restore(repo) == []  # nothing left to restore


def test_an_unknown_lambda_is_refused_before_anything_changes(repo: Path) -> None:
    before = tracked(repo)
    with pytest.raises(SystemExit, match="lambda 2.0"):
        device_tree.slim(repo, "cca", 2.0)
    assert tracked(repo) == before and git(repo, "status", "--porcelain") == ""


def test_the_shipped_tree_is_over_a_device_call_and_slim_brings_it_under(tmp_path: Path) -> None:
    """The reason the module exists, measured on this checkout's own files (a copy: the test
    must not touch the developer's index)."""
    root = Path(__file__).resolve().parents[1]
    names = git(root, "ls-files", "--", "codec/models").split()
    total = sum((root / n).stat().st_size for n in git(root, "ls-files").split() if (root / n).is_file())
    if total <= gpu_tools.TRAVEL_LIMIT:
        pytest.skip("the tracked tree fits a device call without slimming")
    repo = tmp_path / "copy"
    for n in names:
        (repo / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / n, repo / n)
    git(tmp_path, "init", "-q", str(repo))
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "models")
    device_tree.slim(repo)
    rest = total - sum((root / n).stat().st_size for n in names)
    slim_tree = gpu_tools.travel_bytes(repo, [])["tree"] + rest
    assert slim_tree < gpu_tools.TRAVEL_LIMIT / 4, slim_tree
