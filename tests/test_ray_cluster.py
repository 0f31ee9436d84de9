"""A real two-node Ray cluster on this machine (``ray start`` a head and a second node), and an
archive job sent to it through ``--address``: its two workers land on the two nodes."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray

from pipeline import manifest
from pipeline.storage import Store
from tests import corpus
from tests.processes import stop_cluster

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_nodes(tmp_path):
    ray.shutdown()
    exe = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # Its own temporary folder (short: Ray's socket paths must fit 107 bytes), which every process
    # of this cluster names on its command line, so that only they are stopped afterwards.
    temp_dir = tempfile.mkdtemp(prefix="callic-ray-", dir="/tmp")
    # Ray clusters started by `ray start` authenticate with a token: every node and driver needs it.
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    common = [
        "--num-cpus=1",
        "--num-gpus=0",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp_dir}",
    ]
    head = [exe, "start", "--head", f"--port={port}", "--include-dashboard=false", *common]
    try:
        subprocess.run(head, check=True, env=env, capture_output=True, timeout=120)
        subprocess.run(
            [exe, "start", f"--address={address}", *common], check=True, env=env, capture_output=True, timeout=120
        )
        yield address, env
    finally:
        stop_cluster(temp_dir)  # not `ray stop`: it kills every Ray process on the machine
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_on_a_two_node_cluster(two_nodes, tmp_path, tiny_model_path):
    src, dst, out = tmp_path / "src", tmp_path / "dst", tmp_path / "out"
    kinds = corpus.build(src)
    dst.mkdir()
    address, cluster_env = two_nodes
    env = {**cluster_env, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "jobs.cli"]
    archive = [
        *base,
        "archive",
        str(src),
        str(dst),
        "--job-id",
        "n",
        "--steps",
        "0",
        "--shard-size",
        "4",
        "--workers",
        "2",
        "--model",
        str(tiny_model_path),
        "--address",
        address,
        "--quiet",
    ]
    assert subprocess.run(archive, cwd=REPO, env=env, timeout=300).returncode == 10  # the corpus's two bad files
    rows = manifest.load(Store(dst / "n")).to_pylist()
    assert sorted(r["source_key"] for r in rows) == sorted(kinds)
    nodes = {r["worker"].rsplit("/", 1)[1] for r in rows if r["worker"]}
    assert len(nodes) == 2  # one CPU per node, one CPU per worker: a worker on each node
    restore = [
        *base,
        "restore",
        str(dst / "n"),
        str(out),
        "--model",
        str(tiny_model_path),
        "--address",
        address,
        "--quiet",
    ]
    assert subprocess.run(restore, cwd=REPO, env=env, timeout=300).returncode == 0
    corpus.check_restored(src, out, kinds)
