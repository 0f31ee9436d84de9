"""``callic bench --lossy``: every codec and setting measured from real bytes, curves, BD-rate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.bench.bdrate import bd_rate
from jobs.bench.quality import ms_ssim, psnr
from jobs.cli import main


def test_bd_rate_of_a_curve_shifted_by_a_constant_factor():
    anchor = [(0.1, 30.0), (0.2, 33.0), (0.4, 36.0), (0.8, 39.0)]
    assert bd_rate(anchor, [(r * 0.8, q) for r, q in anchor]) == pytest.approx(-20.0)
    assert bd_rate(anchor, [(r * 1.5, q) for r, q in anchor]) == pytest.approx(50.0)
    assert bd_rate(anchor, [(r, q + 20) for r, q in anchor]) is None  # no common quality range
    assert bd_rate(anchor[:3], anchor[:3]) is None  # too few points


def test_quality_measures():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (180, 176, 3)).astype(np.uint8)
    assert psnr(x, x) == float("inf") and ms_ssim(x, x) == pytest.approx(1.0)
    noisy = np.clip(x.astype(int) + rng.integers(-8, 9, x.shape), 0, 255).astype(np.uint8)
    assert 25 < psnr(x, noisy) < 40 and 0.9 < ms_ssim(x, noisy) < 1.0
    assert ms_ssim(x[:100], noisy[:100]) is None  # too small for five scales


def test_lossy_bench_measures_every_codec_from_real_bytes(tmp_path, model_dir):
    from codec.cca.config import CCAConfig
    from codec.cca.model import CCAModel
    from codec.cca.weights import save_model

    files = []
    for seed in range(4):
        torch.manual_seed(seed)
        files.append(str(save_model(CCAModel(CCAConfig.tiny()).eval(), 1.0 + seed, model_dir)))
    data = tmp_path / "data"
    data.mkdir()
    y, x = np.mgrid[0:64, 0:96]
    Image.fromarray(np.stack([x * 2, y * 3, x + y], -1).astype(np.uint8)).save(data / "a.png")
    out = tmp_path / "out"
    rc = main(["bench", str(data), "--lossy", "--lossy-models", ",".join(files), "--out", str(out)])
    assert rc == 0
    rows = _rows(out)
    assert {r["codec"] for r in rows} == {"cca", "jpeg", "webp", "avif", "jxl"}
    assert sum(r["codec"] == "cca" for r in rows) == 4
    assert not [r for r in rows if "error" in r]
    assert all(r["bytes"] > 0 and r["psnr"] > 0 for r in rows)
    # Every anchor setting is really lossy (a lossless one would make BD-rate meaningless).
    assert all(np.isfinite(r["psnr"]) for r in rows if r["codec"] != "cca")
    curves = json.loads((out / "lossy-curves.json").read_text())
    assert {b["anchor"] for b in curves["bd_rate"]} == {"jpeg", "webp", "avif", "jxl"}
    assert (out / "rd.png").read_bytes().startswith(b"\x89PNG")
    assert "BD-rate" in (out / "lossy-report.md").read_text()

    # --resume: a run killed mid-row (its last rows lost, the last line torn) goes on where it was.
    lines = (out / "lossy-rows.jsonl").read_text().splitlines()
    (out / "lossy-rows.jsonl").write_text("\n".join(lines[:-6]) + "\n" + lines[-6][:12])
    argv = ["bench", str(data), "--lossy", "--lossy-models", ",".join(files), "-q"]
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    resumed = _rows(out)
    assert [_point(r) for r in resumed[: len(lines) - 7]] == [_point(r) for r in rows[: len(lines) - 7]]
    assert {_point(r): r["bytes"] for r in resumed} == {_point(r): r["bytes"] for r in rows}

    # --workers: the same points on Ray actors (the lossless bench's runner), the same bytes.
    import ray

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        assert main([*argv, "--out", str(tmp_path / "ray"), "--workers", "1"]) == 0
    finally:
        ray.shutdown()
    distributed = _rows(tmp_path / "ray")
    assert {_point(r): r["bytes"] for r in distributed} == {_point(r): r["bytes"] for r in rows}
    assert "1 Ray workers" in (tmp_path / "ray" / "lossy-report.md").read_text()


def test_lossy_bench_refuses_steps(tmp_path):
    assert main(["bench", str(tmp_path), "--lossy", "--steps", "5", "--out", str(tmp_path / "o")]) == 64


def _rows(out) -> list[dict]:
    """The finished rows of ``lossy-rows.jsonl`` (its first line holds the run's settings)."""
    return [json.loads(line) for line in (out / "lossy-rows.jsonl").read_text().splitlines()[1:]]


def _point(row: dict) -> tuple:
    return row["image"], row["codec"], row["setting"]
