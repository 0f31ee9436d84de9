"""The same file on any thread count: encode with 2 threads and decode with 1, in separate
processes (torch's float results would differ between them; ours must not)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import codec
from codec.images import read_image
from tests.conftest import SAMPLES, assert_same_pixels

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "jobs.cli", *args], check=True, env=env, cwd=ROOT)


def test_encode_two_threads_decode_one_thread(tmp_path, tiny_model_path):
    src = SAMPLES / "kodim23-crop.png"
    model = ("--model", str(tiny_model_path), "--steps", "0")
    _run("encode", str(src), str(tmp_path / "a.cllc"), "--threads", "2", *model)
    _run("decode", str(tmp_path / "a.cllc"), str(tmp_path / "one.png"), "--threads", "1")
    _run("decode", str(tmp_path / "a.cllc"), str(tmp_path / "two.png"), "--threads", "2")
    original = read_image(src).pixels
    assert_same_pixels(read_image(tmp_path / "one.png").pixels, original)
    assert_same_pixels(read_image(tmp_path / "two.png").pixels, original)
    _run("encode", str(src), str(tmp_path / "b.cllc"), "--threads", "1", *model)
    assert (tmp_path / "a.cllc").read_bytes() == (tmp_path / "b.cllc").read_bytes()
    assert np.array_equal(read_image(tmp_path / "one.png").pixels, read_image(tmp_path / "two.png").pixels)


def test_adapted_file_decodes_on_any_thread_count(tmp_path, tiny_model_path):
    """Fine-tuning is float (its result may depend on threads); the file it writes must not."""
    src = SAMPLES / "coffee-crop.png"
    model = ("--model", str(tiny_model_path), "--steps", "4")
    _run("encode", str(src), str(tmp_path / "a.cllc"), "--threads", "2", *model)
    assert codec.info((tmp_path / "a.cllc").read_bytes())["adapted"]
    original = read_image(src).pixels
    for threads in ("1", "2"):
        _run("decode", str(tmp_path / "a.cllc"), str(tmp_path / f"{threads}.png"), "--threads", threads)
        assert_same_pixels(read_image(tmp_path / f"{threads}.png").pixels, original)
