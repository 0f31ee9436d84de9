"""Job folders written by earlier versions (``tests/fixtures/jobs/<date>``, made by
``make_job_fixtures.py`` with that day's code) still report their status and restore exactly from
wherever they were copied to: lossless images to their pixels (dtype, shape, values), the JPEG to
its bytes, the lossy image to its recorded pixel hash (restore checks it) and shape. One restore
of each frozen DST (all its jobs), so one worker start per version."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from codec.images import read_image
from jobs.cli import main
from pipeline import manifest
from pipeline.storage import Store
from tests.conftest import assert_same_pixels

FROZEN = sorted((Path(__file__).parent / "fixtures" / "jobs").glob("*/archive"))
EXACT = {"files": ["rgb.png", "gray.png"], "packed": ["gray.png"]}
BYTES = {"files": ["sub/photo.jpg"], "packed": []}
LOSSY = {"files": [], "packed": ["rgb.png"]}


def test_there_are_frozen_jobs_of_each_kind():
    assert FROZEN
    for archive in FROZEN:
        assert {p.name for p in archive.iterdir()} == set(EXACT), archive


@pytest.mark.parametrize("archive", FROZEN, ids=lambda p: p.parent.name)
def test_frozen_manifests_load_with_their_codec_facts(archive):
    """Manifests written before ``codec_facts`` had ``steps``/``adapter_bytes``/``model_hash``
    columns: they load folded into it, so the model that coded each file is still known."""
    for job in EXACT:
        rows = {r["source_key"]: r for r in manifest.load(Store(archive / job)).to_pylist()}
        learned = [r for r in rows.values() if r["codec"] in ("callic", "cca")]
        assert learned, job
        for r in learned:
            assert re.fullmatch("[0-9a-f]{64}", manifest.facts(r)["model_hash"]), r
        assert all(manifest.facts(r).get("adapter_bytes", "0") == "0" for r in rows.values())


@pytest.mark.parametrize("archive", FROZEN, ids=lambda p: p.parent.name)
def test_frozen_jobs_restore_from_a_copy(ray_cluster, archive, tmp_path, capsys):
    copy = tmp_path / "elsewhere"
    shutil.copytree(archive, copy)  # another place than the one each job.json names
    for job in EXACT:
        capsys.readouterr()
        assert main(["status", str(copy / job), "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["ok"] == len(EXACT[job]) + len(BYTES[job]) + len(LOSSY[job]), st
    out = tmp_path / "out"
    assert main(["restore", str(copy), str(out), "--quiet"]) == 0  # a DST restores to OUT/JOB/key
    for job in EXACT:
        sources, restored = archive.parent / "src" / job, out / job
        for key in EXACT[job]:
            a, b = read_image(sources / key), read_image(restored / key)
            assert_same_pixels(a.pixels, b.pixels)
            assert a.mode == b.mode
        for key in BYTES[job]:
            assert (restored / key).read_bytes() == (sources / key).read_bytes()
        for key in LOSSY[job]:
            a, b = read_image(sources / key), read_image(restored / key)
            assert a.pixels.shape == b.pixels.shape and a.pixels.dtype == b.pixels.dtype
