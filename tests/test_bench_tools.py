"""``bench/rpft_tuning.py`` and ``bench/codec_speed.py`` run and report what they claim (tiny model,
small crops; no timing asserted)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLES

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(*args: str) -> str:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-W", "ignore", *args], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_rpft_tuning_rows(tmp_path, tiny_model_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(SAMPLES / "kodim23-crop.png", folder)
    out = tmp_path / "rows.jsonl"
    stdout = _run(
        str(BENCH / "rpft_tuning.py"),
        str(folder),
        "--model",
        str(tiny_model_path),
        "--max-pixels",
        "2000",
        "--variant",
        "all:steps=2,lr=1e-2",
        "--variant",
        "head:steps=2,lr=1e-2,layers=head",
        "--calibrated",
        "--out",
        str(out),
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["all", "head"]
    for r in rows:
        assert r["pixels"] <= 2000
        assert r["section_bytes"] > 0
        assert r["net_bpsp"] == pytest.approx(r["adapted_bpsp"] + 8 * r["section_bytes"] / (3 * r["pixels"]))
        assert r["base_cal_bpsp"] == rows[0]["base_cal_bpsp"]  # one estimate per image
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("base_bpsp", "net_cal_bpsp", "fine_tune_s"))
    assert rows[1]["section_bytes"] < rows[0]["section_bytes"]  # the head's adapters alone
    assert "mean gain" in stdout and "calibrated" in stdout


def test_codec_speed_compares_calibration_schemes(tiny_model_path):
    stdout = _run(
        str(BENCH / "codec_speed.py"),
        "--image",
        str(SAMPLES / "kodim23-crop.png"),
        "--model",
        str(tiny_model_path),
        "--threads",
        "1",
        "--repeat",
        "1",
        "--crop",
        "24",
        "--calibration",
        "0,1",
    )
    assert "callic cal 0" in stdout and "callic cal 1" in stdout
    assert "ratio cal 1 / cal 0: encode" in stdout
