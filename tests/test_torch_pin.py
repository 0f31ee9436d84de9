"""The test run names the torch it runs on and refuses any other than constraints.txt pins (issue 15:
a resolve once moved torch to 2.14.1 and the suite passed against a torch the README does not pin)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ANY_TORCH_ENV, CONSTRAINTS, pinned_torch, same_torch_release

CONFTEST = Path(__file__).with_name("conftest.py")


def test_constraints_file_pins_the_running_torch_release():
    pinned = pinned_torch()
    assert pinned is not None and re.fullmatch(r"\d+\.\d+\.\d+", pinned), CONSTRAINTS.read_text()
    assert same_torch_release(torch.__version__, pinned)


def test_pin_is_read_from_its_own_line_only(tmp_path):
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# torch==1.0.0 in a comment\nnumpy==2.0\n  torch == 2.13.0  # why\n")
    assert pinned_torch(constraints) == "2.13.0"
    constraints.write_text("torchvision==0.29.1\ntorch>=2.13\n")
    assert pinned_torch(constraints) is None


@pytest.mark.parametrize(
    ("installed", "same"),
    [
        ("2.13.0", True),
        ("2.13.0+cpu", True),
        ("2.13.0+cu128", True),
        ("2.14.1", False),
        ("2.13.1", False),
        ("2.13.0a0", False),
        ("2.13.01", False),
    ],
)
def test_a_local_build_label_is_the_same_release(installed, same):
    assert same_torch_release(installed, "2.13.0") is same


def run_suite_pinned_to(tmp_path: Path, pin: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m pytest -q` on a one-test copy of the suite whose constraints.txt pins torch==`pin`."""
    (tmp_path / "tests").mkdir()
    shutil.copy(CONFTEST, tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "__init__.py").touch()
    (tmp_path / "tests" / "test_one.py").write_text("def test_one():\n    pass\n")
    (tmp_path / "constraints.txt").write_text(f"torch=={pin}\n")
    full_env = {k: v for k, v in os.environ.items() if k != ANY_TORCH_ENV} | {"OMP_NUM_THREADS": "1"} | env
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    return subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=300)


def test_another_torch_stops_the_run_before_any_test(tmp_path):
    result = run_suite_pinned_to(tmp_path, "0.0.1")
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert f"torch {torch.__version__} is installed but constraints.txt pins torch==0.0.1" in output
    assert "passed" not in output


def test_a_waived_check_runs_and_names_the_torch_next_to_the_result(tmp_path):
    result = run_suite_pinned_to(tmp_path, "0.0.1", **{ANY_TORCH_ENV: "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"torch {torch.__version__} (constraints.txt pins 0.0.1)" in result.stdout  # -q hides the header
    assert "1 passed" in result.stdout
