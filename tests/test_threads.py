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
    model = ("--model", str(tiny_model_path), "--codec", "callic", "--steps", "0")
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
    model = ("--model", str(tiny_model_path), "--codec", "callic", "--steps", "4", "--adapt-min-pixels", "0")
    _run("encode", str(src), str(tmp_path / "a.cllc"), "--threads", "2", *model)
    assert codec.info((tmp_path / "a.cllc").read_bytes())["adapted"]
    original = read_image(src).pixels
    for threads in ("1", "2"):
        _run("decode", str(tmp_path / "a.cllc"), str(tmp_path / f"{threads}.png"), "--threads", threads)
        assert_same_pixels(read_image(tmp_path / f"{threads}.png").pixels, original)


def test_cgroup_cpu_quota_caps_the_cores(tmp_path):
    from pipeline.cores import available_cores, cgroup_cpu_quota

    assert cgroup_cpu_quota(tmp_path) is None  # no cgroup files: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_quota(tmp_path) == 2.0
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


def test_workers_times_threads_never_exceed_the_cores(monkeypatch):
    """More workers than cores asked for: each runs as many threads as it has CPUs, so the pool
    is cut to one worker per core instead of oversubscribing them."""
    from pipeline import cluster

    monkeypatch.setattr(cluster.ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    for workers in (None, 1, 2, 3, 8):
        p = cluster.plan(workers, 1.0)
        assert p.workers * p.cpus_per_worker <= 2, (workers, p)
    assert cluster.plan(None, 1.0) == cluster.Plan(1, 0.0, 2)  # one worker, the node's cores as threads


def test_local_cluster_gets_the_cores_the_process_has(monkeypatch):
    """A process pinned to one core (``taskset -c 0``) starts a local cluster of one CPU: Ray
    alone would count the machine's cores."""
    from pipeline import cluster, cores

    seen: dict = {}
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kw: seen.update(kw))
    cluster.connect(None)
    assert seen["num_cpus"] == 1


def test_the_cli_makes_openmp_threads_sleep_before_torch_loads():
    """Spinning OpenMP threads are what collapsed a 2-thread decode beside a busy process."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    probe = "import jobs.cli, os, sys, torch; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["PASSIVE", "True"]  # set, and torch (loaded after the CLI) saw it set
    probe = "import jobs, sys; print('torch' in sys.modules)"  # set before anything imports torch
    assert subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    ).stdout.split() == ["False"]


def test_default_threads_follow_omp_num_threads_else_the_cores(monkeypatch):
    from jobs.runtime import default_threads
    from pipeline.cores import available_cores

    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's, or Ray's for a 3-CPU actor
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == available_cores()
