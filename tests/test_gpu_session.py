"""``bench/gpu_session.sh --dry-run``: every stage of the device call on the CPU with tiny models,
and the helpers it rests on (the exactness comparison, the pack, the return limits)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import gpu_check, gpu_tools
from codec.errors import CallicError, VerificationError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_session.sh"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="the session script needs bash")
DRY_STEPS = 2  # the dry run adapts for 2 steps where the device run adapts for 10
EXPECTED_TIMINGS = [
    "encode T=0 (cpu)",
    f"encode T={DRY_STEPS} (cpu)",
    "decode T=0 (cpu check)",
    f"decode T={DRY_STEPS} (cpu check)",
    "decode T=0 (cpu)",
    f"decode T={DRY_STEPS} (cpu)",
]


def dry_run(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TMPDIR": str(out.parent)}
    command = ["bash", str(SCRIPT), "--dry-run", "--out", str(out), *args]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def log_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu-session") / "out"
    dry_run(out)
    return out


@needs_bash
def test_every_stage_ran_and_passed(session):
    summary = load(session / "summary.json")
    assert [(s["stage"], s["rc"]) for s in summary["stages"]] == [
        ("prepare", 0),
        ("install", 0),
        ("check", 0),
        ("train", 0),
    ]
    assert summary["ok"] and summary["mode"] == "dry-run"
    assert "=== summary" in (session / "session.log").read_text()  # the log is tee'd into $OUT
    assert "ok" in (session / "summary.md").read_text().splitlines()[0]


@needs_bash
def test_every_photo_decodes_exactly_on_the_cpu(session):
    check = load(session / "check.json")
    files = check["files"]
    assert len(check["photos"]) == 10 and check["exact_all"] is True
    for steps in (0, DRY_STEPS):
        rows = [f for f in files if f["steps"] == steps]
        assert sorted(f["photo"] for f in rows) == sorted(check["photos"]), steps
    # Where adaptation dropped the adapters, a forced file still checks the merged-adapter path.
    adapted = {f["photo"] for f in files if f["adapters"] in ("kept", "forced")}
    assert adapted == set(check["photos"])
    assert all(f["exact"] and f["error"] is None for f in files)
    assert all(f["device_decode_exact"] for f in files if f["adapters"] != "forced")
    assert check["skipped"] == []


@needs_bash
def test_timing_and_adaptation_tables_have_their_rows(session):
    check = load(session / "check.json")
    assert [t["name"] for t in check["timings"]] == EXPECTED_TIMINGS
    assert all(t["n"] == 10 and t["median_s"] > 0 for t in check["timings"])
    assert [a["batch"] for a in check["adaptation"]] == [1, 4, 16]
    assert all(a["images_per_s"] > 0 and a["steps"] == DRY_STEPS for a in check["adaptation"])
    md = (session / "summary.md").read_text()
    assert all(f"| {name} |" in md for name in EXPECTED_TIMINGS)


@needs_bash
def test_training_log_checkpoint_and_model_come_back(session):
    rows = log_rows(session / "train" / "log.csv")
    assert [int(r["step"]) for r in rows] == [0, 6, 12]
    state = torch.load(io.BytesIO((session / "train" / "checkpoint.pt").read_bytes()), weights_only=True)
    assert state["step"] == 12 and set(state) >= {"model", "optimizer", "config"}
    [model] = (session / "train" / "model").glob("mgcf-*.safetensors")
    from codec.mgcf.weights import load_model_file

    assert load_model_file(model).cfg.to_json() == state["config"]
    assert load(session / "summary.json")["training"]["end_step"] == 12


@needs_bash
def test_outputs_fit_what_a_device_call_brings_back(session):
    assert gpu_tools.return_problems(session) == []
    assert load(session / "summary.json")["return_problems"] == []


@needs_bash
def test_a_packed_checkpoint_is_resumed(session, tmp_path):
    """``--prepare --checkpoint``: the session continues the run (its step, its log), not a new one."""
    out = tmp_path / "out"
    dry_run(out, "--stages", "train", "--checkpoint", str(session / "train" / "checkpoint.pt"))
    summary = load(out / "summary.json")
    assert summary["training"]["start_step"] == 12 and summary["training"]["end_step"] == 24
    assert [int(r["step"]) for r in log_rows(out / "train" / "log.csv")] == [0, 6, 12, 18, 24]
    assert "resumed from step 12" in summary["stages"][-1]["note"]


@needs_bash
def test_cca_session_checks_lossy_files_and_brings_back_a_small_init(tmp_path):
    out = tmp_path / "out"
    dry_run(out, "--codec", "cca", "--stages", "check,train")
    check = load(out / "check.json")
    assert len(check["files"]) == 10 and check["exact_all"] is True
    assert {f["steps"] for f in check["files"]} == {"lossy"} and check["adaptation"] == []
    assert [int(r["step"]) for r in log_rows(out / "train" / "log.csv")] == [0, 2, 4]
    init = torch.load(io.BytesIO((out / "train" / "init-fp16.pt").read_bytes()), weights_only=True)
    assert "optimizer" not in init and init["step"] == 4
    assert all(v.dtype == torch.float16 for v in init["model"].values() if v.is_floating_point())
    from codec.cca.config import CCAConfig
    from codec.cca.loss import CCATrainee
    from codec.cca.weights import load_model_file

    CCATrainee(CCAConfig.from_json(init["config"])).load_state_dict(init["model"])  # what --init FILE.pt does
    [model] = (out / "train" / "model").glob("cca-*.safetensors")
    assert load_model_file(model).cfg.to_json() == init["config"]
    assert gpu_tools.return_problems(out) == []


# ------------------------------------------------------------------------------ the helpers


def write_photos(folder: Path, n: int, size: int = 16) -> list[np.ndarray]:
    from PIL import Image

    folder.mkdir()
    images = [np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8) for i in range(n)]
    for i, px in enumerate(images):
        Image.fromarray(px).save(folder / f"p{i}.png")
    return images


def test_a_broken_decode_is_reported(tmp_path, tiny_model_path, monkeypatch):
    """The check compares values, dtype and shape: a decoder that gets any of them wrong makes the
    file a mismatch with its reason, and the exit code 1."""
    write_photos(tmp_path / "photos", 3)
    breakages = iter(
        [
            lambda px: np.where(np.arange(px.size).reshape(px.shape) == 5, px ^ 1, px),  # one sample off
            lambda px: px.astype(np.uint16),
            lambda px: px[:-1],
        ]
    )
    real = gpu_check._decode_cpu
    monkeypatch.setattr(gpu_check, "_decode_cpu", lambda data: next(breakages)(real(data)))
    out = tmp_path / "check.json"
    args = [str(tmp_path / "photos"), "--out", str(out), "--device", "cpu", "--model", str(tiny_model_path)]
    assert gpu_check.main([*args, "--steps", "0", "--batches", "", "--cpu-workers", "1"]) == 1
    report = load(out)
    assert report["exact_all"] is False
    errors = {f["photo"]: f["error"] for f in report["files"]}
    assert errors["p0"] == "1 of 768 samples differ"
    assert errors["p1"].startswith("dtype uint16") and errors["p2"].startswith("shape (15, 16, 3)")
    assert all(f["device_decode_exact"] for f in report["files"])  # the encoder's own decode was right


def test_a_decoder_error_counts_as_a_mismatch():
    def fails(data: bytes) -> np.ndarray:
        raise VerificationError("decoded image does not match the hash stored in the file")

    px = np.zeros((2, 2, 3), np.uint8)
    row = gpu_check.check_one(b"", px, fails)
    assert row["exact"] is False and "VerificationError" in row["error"]
    assert gpu_check.check_one(b"", px, lambda data: px.copy())["exact"] is True


def noise(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_training_crops_keep_the_group_mix():
    """Packed pixels stay proportional to each group's source pixels (so ``callic train``'s
    square-root mix is the same on the pack), images of a group take turns, tiles do not overlap."""
    big = noise(0, 64, 128)  # group a: 8 tiles of 32, 8192 pixels
    a2 = noise(1, 64, 64)  # group a: 4 tiles
    small = noise(2, 32, 64)  # group b: 2 tiles, 2048 pixels
    stamp = noise(3, 20, 24)  # group b: smaller than a tile, goes in whole
    images = [("a-big", "a", big), ("a-two", "a", a2), ("b-small", "b", small), ("b-stamp", "b", stamp)]
    everything = gpu_tools.group_crops(images, 32, min_side=16, seed=0, max_bytes=1 << 30)
    assert len(everything) == 8 + 4 + 2 + 1
    one = max(len(d) for _, _, d in everything)
    some = gpu_tools.group_crops(images, 32, min_side=16, seed=0, max_bytes=6 * one)
    names = [n for n, _, _ in some]
    assert len(some) == 6 and sum(len(d) for _, _, d in some) <= 6 * one
    pixels = {g: sum(np.prod(gpu_tools.png_size(d)) for _, gg, d in some if gg == g) for g in "ab"}
    assert pixels["a"] / (8192 + 4096) == pytest.approx(pixels["b"] / (2048 + 480), rel=0.5)
    assert names.index("a-big-000.png") < names.index("a-two-000.png") < names.index("a-big-001.png")
    from codec.images import read_image

    tiles = {read_image(d).pixels.tobytes() for n, _, d in everything if n.startswith("a-big")}
    blocks = {np.ascontiguousarray(big[y : y + 32, x : x + 32]).tobytes() for y in (0, 32) for x in range(0, 128, 32)}
    assert tiles == blocks
    assert [read_image(d).pixels.shape for n, _, d in everything if n.startswith("b-stamp")] == [(20, 24, 3)]
    assert gpu_tools.group_crops([("tiny", "c", noise(4, 8, 8))], 32, 16, 0, 1 << 20) == []  # under min_side


def test_photo_crops_take_every_image_first():
    crops = gpu_tools.round_robin_crops([("x", noise(0, 64, 64)), ("y", noise(1, 32, 32))], 32, seed=0, count=3)
    assert [n for n, _ in crops] == ["x-000.png", "y-000.png", "x-001.png"]


def test_return_limits_are_checked(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "ok.txt").write_text("x")
    assert gpu_tools.return_problems(tmp_path) == []
    (tmp_path / "a" / "b" / "c" / "deep.txt").write_text("x")
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(gpu_tools.RETURN_FILE_BYTES + 1)
    for i in range(7):
        (tmp_path / f"f{i}").write_text("x")
    problems = gpu_tools.return_problems(tmp_path)
    assert any("10 files" in p for p in problems)
    assert any(p.startswith("big.bin") for p in problems)
    assert any("deep.txt: more than 2 folders down" in p for p in problems)


def test_a_file_that_is_not_a_checkpoint_is_refused_by_name(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CallicError, match="notes.pt"):
        gpu_tools.load_checkpoint(bad)
    buf = io.BytesIO()
    torch.save({"model": {}}, buf)
    bad.write_bytes(buf.getvalue())
    with pytest.raises(CallicError, match="needs model, step, config"):
        gpu_tools.load_checkpoint(bad)


def test_a_checkpoint_too_large_to_travel_is_packed_as_its_float16_weights(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("step\n0\n")
    small = {"model": {"w": torch.ones(3), "n": torch.tensor([7])}, "optimizer": {}, "step": 3, "config": "{}"}
    big = {**small, "model": {"w": torch.full((gpu_tools.RETURN_FILE_BYTES // 4 + 1,), 0.5), "n": torch.tensor([7])}}
    for state, stripped in ((small, False), (big, True)):
        torch.save(state, run / "checkpoint.pt")
        dest = tmp_path / f"pack-{stripped}"
        dest.mkdir()
        info = gpu_tools.pack_checkpoint(run / "checkpoint.pt", dest)
        assert info["stripped"] is stripped and info["step"] == 3
        packed = torch.load(dest / "checkpoint.pt", weights_only=True)
        assert packed["model"]["w"].dtype == (torch.float16 if stripped else torch.float32)
        assert torch.equal(packed["model"]["n"], torch.tensor([7])) and ("optimizer" in packed) is not stripped
        assert (dest / "log.csv").read_text() == "step\n0\n"
    assert (tmp_path / "pack-True" / "checkpoint.pt").stat().st_size < gpu_tools.RETURN_FILE_BYTES
