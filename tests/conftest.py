"""Shared fixtures: a seeded random tiny model, registered where decoders look for models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import codec
from codec.config import MGCFConfig
from codec.mgcf import MGCF
from codec.weights import save_model

SAMPLES = Path(__file__).resolve().parents[1] / "jobs" / "samples"


def make_model(cfg: MGCFConfig, seed: int = 0) -> MGCF:
    torch.manual_seed(seed)
    model = MGCF(cfg)
    # Random weights, scaled down so predictions are sharp enough for mixed-magnitude tables.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    return model.eval()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    os.environ["CALLIC_MODEL_PATH"] = str(d)
    return d


@pytest.fixture(scope="session")
def tiny_model_path(model_dir) -> Path:
    return save_model(make_model(MGCFConfig.tiny()), model_dir)


@pytest.fixture(scope="session")
def tiny_lossy_model_path(model_dir) -> Path:
    """A random tiny CCA model (the lossy codec), installed where decoders look for it."""
    from codec.lossy.config import CCAConfig
    from codec.lossy.model import CCAModel
    from codec.lossy.weights import save_model as save_lossy

    torch.manual_seed(0)
    return save_lossy(CCAModel(CCAConfig.tiny()).eval(), 1.0, model_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path):
    return codec.load_model(str(tiny_model_path))


@pytest.fixture(scope="session")
def samples() -> dict[str, np.ndarray]:
    from codec.images import read_image

    return {p.stem: read_image(p).pixels for p in sorted(SAMPLES.glob("*.png"))}


def assert_same_pixels(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.array_equal(a, b)
