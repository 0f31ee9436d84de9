"""``callic train``: the loss goes down, a resumed run repeats the uninterrupted one exactly, and the
Ray Train path (one CPU worker) runs the same loop."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch

import codec
from codec.images import read_image
from codec.mgcf.weights import load_model_file
from jobs.train import TrainConfig, train_loop
from jobs.trainsets import step_crops

from .conftest import SAMPLES, assert_same_pixels


def config(out: Path, **kw) -> dict:
    base = TrainConfig(
        data=str(SAMPLES),
        val=str(SAMPLES),
        out=str(out),
        config="tiny",
        steps=60,
        batch=8,
        lr=3e-3,
        warmup=5,
        val_every=1000,
        val_tiles=32,
        threads=1,
        device="cpu",
    )
    return dataclasses.asdict(dataclasses.replace(base, **kw))


def log(out: Path) -> list[dict]:
    with open(out / "log.csv") as f:
        return list(csv.DictReader(f))


def checkpoint(out: Path) -> dict:
    return torch.load(io.BytesIO((out / "checkpoint.pt").read_bytes()), weights_only=True)


def test_training_lowers_the_loss_and_exports_a_working_model(tmp_path):
    path = train_loop(config(tmp_path))
    rows = log(tmp_path)
    assert [int(r["step"]) for r in rows] == [0, 60]
    before, after = float(rows[0]["val_bpsp"]), float(rows[-1]["val_bpsp"])
    assert after < before - 1.0, (before, after)
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")

    # The exported file is a codec model: it codes an image and gets every pixel back.
    model_file = load_model_file(path)
    raster = read_image(SAMPLES / "kodim23-crop.png")
    crop = codec.Raster.from_array(np.ascontiguousarray(raster.pixels[:20, :24]))
    model = codec.api.Model(model_file.exact_model(), model_file.digest)
    restored = codec.decode(codec.encode(crop, model=model, adapt=None, coder="learned"), model=model)
    assert_same_pixels(restored.pixels, crop.pixels)


def test_resume_reproduces_the_next_step_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_loop(config(a, stop_after=3))
    after_three = checkpoint(a)
    train_loop(config(a, stop_after=1))  # resumes from step 3
    train_loop(config(b, stop_after=4))  # uninterrupted
    resumed, straight = checkpoint(a), checkpoint(b)
    assert after_three["step"] == 3 and resumed["step"] == straight["step"] == 4
    for name, tensor in straight["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    assert any(not torch.equal(after_three["model"][k], v) for k, v in straight["model"].items())
    for key, state in straight["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(resumed["optimizer"]["state"][key][name]), torch.as_tensor(value))


def test_crops_depend_only_on_seed_rank_and_step():
    images = [np.random.default_rng(i).integers(0, 256, (20, 30, 3), dtype=np.uint8) for i in range(3)]
    x = step_crops(images, 4, 8, seed=1, rank=0, step=7)
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.uint8
    assert torch.equal(x, step_crops(images, 4, 8, seed=1, rank=0, step=7))
    assert not torch.equal(x, step_crops(images, 4, 8, seed=1, rank=1, step=7))
    assert not torch.equal(x, step_crops(images, 4, 8, seed=1, rank=0, step=8))


def test_ray_train_with_one_cpu_worker(tmp_path):
    ray = pytest.importorskip("ray")
    from jobs.train import train_with_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        train_with_ray(TrainConfig(**config(tmp_path, steps=20, val_every=10, workers=1)))
    finally:
        ray.shutdown()
    rows = log(tmp_path)
    assert [int(r["step"]) for r in rows] == [0, 10, 20]
    assert all(r["workers"] == "1" for r in rows)
    assert float(rows[-1]["val_bpsp"]) < float(rows[0]["val_bpsp"])
    assert checkpoint(tmp_path)["step"] == 20
    assert len(list((tmp_path / "model").glob("mgcf-*.safetensors"))) == 1


def test_lossy_training_logs_both_rates_resumes_and_exports(tmp_path):
    from codec.cca.weights import load_model_file as load_cca

    kw = {"codec": "cca", "config": "tiny", "crop": 64, "batch": 4, "lr": 2e-3, "val_tiles": 8, "lmbda": 1.0}
    train_loop(config(tmp_path, steps=40, val_every=20, **kw))
    rows = log(tmp_path)
    assert [int(r["step"]) for r in rows] == [0, 20, 40]
    assert {"train_bpp", "train_aux_bpp", "train_psnr", "val_bpp", "val_psnr"} <= set(rows[0])
    first, last = rows[0], rows[-1]

    # Lower rate-distortion cost on the validation tiles (the loss's own weighting of PSNR and bpp).
    def cost(r):
        return 0.05 * 255**2 * 10 ** (-float(r["val_psnr"]) / 10) + 1.0 * float(r["val_bpp"])

    assert cost(last) < 0.8 * cost(first), (first, last)
    assert float(last["train_aux_bpp"]) > 0
    [path] = (tmp_path / "model").glob("cca-*.safetensors")
    model_file = load_cca(path)
    assert model_file.lmbda == 1.0 and model_file.cfg.slices == 5
    # A configuration mismatch is refused rather than silently restarting.
    with pytest.raises(Exception, match="different model configuration"):
        train_loop(config(tmp_path, steps=41, **(kw | {"config": "small", "crop": 64})))
    # Another rate point starts from this run's checkpoint: model and auxiliary model.
    other = tmp_path / "other"
    train_loop(config(other, steps=2, val_every=2, init=str(tmp_path / "checkpoint.pt"), **(kw | {"lmbda": 4.0})))
    [point] = (other / "model").glob("cca-*.safetensors")
    assert load_cca(point).lmbda == 4.0
    rows = log(other)
    assert abs(float(rows[0]["val_psnr"]) - float(last["val_psnr"])) < 0.01  # it starts where that run ended


def test_slice_k_shapes_a_new_lossy_model_only(tmp_path):
    from jobs.objectives import CCAObjective

    kw = {"codec": "cca", "config": "tiny", "crop": 64}
    even = CCAObjective(TrainConfig(**config(tmp_path, slice_k=0.0, **kw))).build()
    assert even.model.cfg.slice_sizes == (8, 8, 8, 8, 8)
    assert CCAObjective(TrainConfig(**config(tmp_path, **kw))).build().model.cfg.slice_sizes == (1, 3, 7, 11, 18)
    with pytest.raises(Exception, match="--slice-k"):
        CCAObjective(TrainConfig(**config(tmp_path, slice_k=0.0, init="x.pt", **kw)))


def test_threads_hold_whatever_the_device(tmp_path, monkeypatch):
    """``--threads 1 --device cpu`` trains on one thread (``--device`` used to reset the count)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what the old reset would have taken
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    for device in ("cpu", "auto"):
        calls.clear()
        train_loop(config(tmp_path / device, threads=1, device=device, steps=1, val=None))
        assert calls and set(calls) == {1}, (device, calls)


def test_training_keeps_freed_memory_for_the_next_step(tmp_path, monkeypatch):
    """Each step frees and reallocates the same activations: ``callic train`` asks glibc to keep
    them (``jobs.runtime.keep_freed_memory``) instead of page-faulting them in again."""
    import platform

    import jobs.runtime
    import jobs.train

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert jobs.runtime.keep_freed_memory() is True
    calls = []
    monkeypatch.setattr(jobs.train, "keep_freed_memory", lambda: calls.append(1) or True)
    train_loop(config(tmp_path, steps=1, val=None))
    assert calls == [1]
