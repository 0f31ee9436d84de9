"""The patch size is a model choice: ``callic train --patch`` sets it (and the crop side), the
model file and every ``.cllc`` header record it, and the default patches per stream keep the
decoder's memory per stream the same whatever the patch size."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import codec
from codec.defaults import patches_per_stream
from codec.errors import CallicError
from codec.header import read_header
from codec.mgcf.config import MGCFConfig
from codec.mgcf.exact import ExactMGCF
from codec.mgcf.model import MGCF
from codec.mgcf.weights import load_model_file, save_model
from jobs.train import TrainConfig, train_loop

from .conftest import SAMPLES, assert_same_pixels


def tiny_model(tmp_path, patch: int) -> codec.api.Model:
    torch.manual_seed(0)
    path = save_model(MGCF(dataclasses.replace(MGCFConfig.tiny(), patch=patch)), tmp_path)
    return codec.api.load_model(str(path))


def test_default_patches_per_stream_keep_the_pixels_per_stream():
    assert [patches_per_stream(p) for p in (8, 32, 64, 128, 256)] == [64, 64, 64, 16, 4]
    for p in (64, 128, 256):
        assert patches_per_stream(p) * p * p == 64 * 64 * 64


def test_a_bigger_patch_model_codes_with_fewer_patches_per_stream_and_decodes_exactly(tmp_path):
    model = tiny_model(tmp_path, 128)
    pixels = np.random.default_rng(3).integers(0, 256, (150, 140, 3), dtype=np.uint8)  # 4 patches of 128
    data = codec.encode(pixels, model=model, adapt=None, coder="learned")
    header, _ = read_header(data)
    assert (header.patch, header.patches_per_stream) == (128, 16)
    assert_same_pixels(codec.decode(data, model=model).pixels, pixels)
    # An explicit choice still wins.
    data = codec.encode(pixels, model=model, adapt=None, coder="learned", patches_per_stream=1)
    header, _ = read_header(data)
    assert header.patches_per_stream == 1
    assert_same_pixels(codec.decode(data, model=model).pixels, pixels)


def test_decoder_state_per_default_stream_does_not_grow_with_the_patch():
    base = MGCFConfig()
    per_stream = {}
    for p in (64, 128, 256):
        cfg = dataclasses.replace(base, patch=p)
        per_patch = ExactMGCF.cache_bytes_per_patch(_FakeExact(cfg))
        per_stream[p] = per_patch * patches_per_stream(p)
    assert max(per_stream.values()) <= 1.02 * per_stream[64], per_stream


class _FakeExact:
    """Just enough of ``ExactMGCF`` for its memory formula (which reads the config only)."""

    def __init__(self, cfg: MGCFConfig):
        self.cfg = cfg


def train_config(tmp_path, **kw) -> dict:
    base = TrainConfig(
        data=str(SAMPLES),
        out=str(tmp_path / "run"),
        config="tiny",
        steps=2,
        batch=2,
        lr=1e-3,
        warmup=1,
        val_every=1000,
        threads=1,
        device="cpu",
        quiet=True,
    )
    return dataclasses.asdict(dataclasses.replace(base, **kw))


def test_train_patch_sets_the_model_patch_and_the_crop_side(tmp_path, monkeypatch):
    init = save_model(MGCF(MGCFConfig.tiny()), tmp_path)  # patch 8
    seen = []
    import jobs.train

    real = jobs.train.step_crops

    def spy(images, n, size, *args, **kwargs):
        seen.append(size)
        return real(images, n, size, *args, **kwargs)

    monkeypatch.setattr(jobs.train, "step_crops", spy)
    path = train_loop(train_config(tmp_path, init=str(init), patch=16))
    exported = load_model_file(path)
    assert exported.cfg.patch == 16 and exported.cfg.width == MGCFConfig.tiny().width
    assert seen == [16, 16]
    # A resumed run must keep the patch: another one is another model.
    with pytest.raises(CallicError, match="different model configuration"):
        train_loop(train_config(tmp_path, init=str(init), patch=32, steps=3))


def test_train_patch_is_checked_and_lossless_only(tmp_path):
    with pytest.raises(CallicError, match="--patch 1"):
        train_loop(train_config(tmp_path, patch=1))
    with pytest.raises(CallicError, match="--codec callic"):
        train_loop(train_config(tmp_path, codec="cca", patch=128))
