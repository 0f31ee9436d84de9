"""bench/train_speed.py runs and reports the rows it claims (tiny model, 2 steps; no timing asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_speed.py"
CATEGORIES = 12  # bench.train_speed.CATEGORIES


def run_bench(tmp_path: Path, *args: str) -> tuple[list[dict], str]:
    out = tmp_path / "rows.json"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-W", "ignore", str(BENCH), "--tiny", "--threads", "1", "--json", str(out), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_rows_per_config_and_variant_with_a_profile(tmp_path):
    rows, stdout = run_bench(
        tmp_path,
        "--configs",
        "8x2,16x1",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--variants",
        "base,dw-plain",
        "--profile",
        "base",
        "--profile-steps",
        "1",
    )
    steps = [r for r in rows if r["kind"] == "step"]
    assert sorted((r["crop"], r["batch"], r["variant"]) for r in steps) == [
        (8, 2, "base"),
        (8, 2, "dw-plain"),
        (16, 1, "base"),
        (16, 1, "dw-plain"),
    ]
    for r in steps:
        assert "error" not in r, r
        assert r["threads"] == 1
        assert 0 < r["q1_ms"] <= r["ms_per_step"] <= r["q3_ms"]
        assert r["pixels_per_s"] == pytest.approx(r["crop"] ** 2 * r["batch"] / (r["ms_per_step"] / 1000))
        assert r["cpu_ms_per_step"] > 0
    for crop in (8, 16):
        base, plain = (next(r for r in steps if r["crop"] == crop and r["variant"] == v) for v in ("base", "dw-plain"))
        assert base["ratio"] == 1.0  # the reference, against itself round by round
        assert plain["ratio"] > 0 and plain["ratio_q1"] <= plain["ratio"] <= plain["ratio_q3"]
        # dw-plain is the same function: same first loss on the same weights and batch
        assert plain["loss0"] == pytest.approx(base["loss0"], rel=1e-5)
    profile = [r for r in rows if r["kind"] == "profile"]
    for crop in (8, 16):
        mine = [r for r in profile if r["crop"] == crop and r["variant"] == "base"]
        shares = [r["share"] for r in mine if not math.isnan(r["share"])]
        assert len(shares) == CATEGORIES and len(mine) == CATEGORIES + 1
        assert sum(shares) == pytest.approx(1.0)
        by_name = {r["category"]: r["ms_per_step"] for r in mine}
        for part in (
            "GEMM (linear layers)",
            "depth-wise conv backward",
            "GELU fwd+bwd",
            "mixture loss fwd+bwd",
            "optimizer (Adam, zero_grad)",
        ):
            assert by_name[part] > 0, part
    assert stdout.count("\n") >= len(rows)  # a line per row, after the machine line


def test_ddp_mode_runs_two_processes(tmp_path):
    rows, _ = run_bench(tmp_path, "--configs", "8x2", "--steps", "2", "--warmup", "0", "--ddp", "2")
    ddp = [r for r in rows if r["variant"] == "ddp2"]
    assert len(ddp) == 1 and "error" not in ddp[0], ddp
    assert ddp[0]["processes"] == 2 and ddp[0]["ms_per_step"] > 0
    assert ddp[0]["pixels_per_s"] == pytest.approx(8 * 8 * 2 / (ddp[0]["ms_per_step"] / 1000))


def test_malloc_cache_and_a_batch_that_does_not_split(tmp_path):
    """--malloc-cache runs (and says so); a DDP batch that does not split is a row, not a crash."""
    args = ("--configs", "8x3", "--steps", "1", "--warmup", "0", "--ddp", "2", "--malloc-cache")
    rows, stdout = run_bench(tmp_path, *args)
    assert "--malloc-cache" in stdout.splitlines()[0]
    base = next(r for r in rows if r["variant"] == "base")
    assert base["faults"] >= 0 and base["ms_per_step"] > 0
    assert "does not split" in next(r for r in rows if r["variant"] == "ddp2")["error"]
