"""Shared fixtures: a seeded random tiny model, registered where decoders look for models."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import codec
from codec.mgcf.config import MGCFConfig
from codec.mgcf.model import MGCF
from codec.mgcf.weights import save_model

SAMPLES = Path(__file__).resolve().parents[1] / "jobs" / "samples"
# The torch the suite must run against (README Quick start); CALLIC_TEST_ANY_TORCH=1 runs it anyway.
CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"
ANY_TORCH_ENV = "CALLIC_TEST_ANY_TORCH"


def pinned_torch(constraints: Path = CONSTRAINTS) -> str | None:
    """The version `constraints.txt` pins torch to (`torch==X`), or None where it pins none."""
    for line in constraints.read_text().splitlines():
        match = re.fullmatch(r"\s*torch\s*==\s*([^\s#;]+)\s*(?:#.*)?", line)
        if match:
            return match.group(1)
    return None


def same_torch_release(installed: str, pinned: str) -> bool:
    """True if `installed` is the pinned release, whatever its local build label (`+cpu`, `+cu128`)."""
    return installed.split("+", 1)[0] == pinned


def torch_line() -> str:
    pinned = pinned_torch() if CONSTRAINTS.exists() else None
    return f"torch {torch.__version__} (constraints.txt pins {pinned or 'none'})"


def pytest_report_header(config: pytest.Config) -> str:
    """Name the torch the tests run against: results from another torch are not the tested ones."""
    return torch_line()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    """`-q` (the README's command) hides the header, so name the torch next to the result instead."""
    if not terminalreporter.showheader:
        terminalreporter.write_line(torch_line())


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to run on another torch than constraints.txt pins, before a single test runs: a resolve
    that moved torch (to 2.14.1 plus 18 nvidia-* wheels, once) would otherwise pass unnoticed."""
    if os.environ.get(ANY_TORCH_ENV) == "1":
        return
    pinned = pinned_torch() if CONSTRAINTS.exists() else None
    if pinned is None:
        pytest.exit(f"{CONSTRAINTS} pins no torch (`torch==X` is needed)", returncode=pytest.ExitCode.USAGE_ERROR)
    if not same_torch_release(torch.__version__, pinned):
        pytest.exit(
            f"torch {torch.__version__} is installed but {CONSTRAINTS.name} pins torch=={pinned}: reinstall with "
            f"`pip install -c constraints.txt torch` (or set {ANY_TORCH_ENV}=1 to run on this torch anyway)",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def make_model(cfg: MGCFConfig, seed: int = 0) -> MGCF:
    torch.manual_seed(seed)
    model = MGCF(cfg)
    # Random weights, scaled down so predictions are sharp enough for mixed-magnitude tables.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    return model.eval()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs, shared by one test file's tests (starting one costs seconds)."""
    import ray

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


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
    from codec.cca.config import CCAConfig
    from codec.cca.model import CCAModel
    from codec.cca.weights import save_model as save_lossy

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
