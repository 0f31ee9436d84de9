"""Faults a long job meets: a worker SIGKILLed mid-shard, the driver killed mid-job, a storage
endpoint that throttles. After each the job finishes with every image exactly once and exact."""

from __future__ import annotations

import http.server
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import requests
from PIL import Image

from jobs.cli import main
from pipeline import manifest
from pipeline.storage import Store
from tests import corpus
from tests.processes import our_processes
from tests.test_archive_s3 import moto_url, s3  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]


def _images(root: Path, n: int) -> dict[str, str]:
    rng = np.random.default_rng(0)
    kinds = {}
    for i in range(n):
        y, x = np.mgrid[0:24, 0:32]
        px = ((x * (i + 1) + y * 3)[..., None] + rng.integers(0, 9, (24, 32, 3))) % 256
        Image.fromarray(px.astype(np.uint8)).save(root / f"img{i:03d}.png")
        kinds[f"img{i:03d}.png"] = "pixels"
    return kinds


def _exactly_once(job: Path, kinds: dict[str, str]) -> list[dict]:
    rows = manifest.load(Store(job)).to_pylist()
    assert sorted(r["source_key"] for r in rows) == sorted(kinds)
    assert all(r["status"] == "ok" for r in rows)
    return rows


@pytest.fixture
def ray_cluster():
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _shard_workers() -> list[int]:
    """PIDs of this test's shard worker actors (Ray names their processes ``ray::_ShardWorker...``)."""
    return our_processes(b"ray::_ShardWorker")


def test_worker_killed_mid_shard(ray_cluster, tmp_path, tiny_model_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    kinds = _images(src, 12)
    result: dict[str, int] = {}
    args = [
        "archive",
        str(src),
        str(dst),
        "--job-id",
        "k",
        "--steps",
        "3",
        "--shard-size",
        "12",
        "--no-pack",
        "--model",
        str(tiny_model_path),
        "--quiet",
    ]
    runner = threading.Thread(target=lambda: result.setdefault("rc", main(args)))
    runner.start()
    objects = dst / "k" / "objects"
    deadline = time.time() + 120
    while time.time() < deadline and not (objects.exists() and any(objects.rglob("*.cllc"))):
        time.sleep(0.05)
    victims = _shard_workers()
    assert victims, "no shard worker found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)  # mid-shard: some objects written, no manifest yet
    runner.join(300)
    assert result.get("rc") == 0
    rows = _exactly_once(dst / "k", kinds)
    assert manifest.read_all(Store(dst / "k")).num_rows == len(kinds)  # the dead attempt wrote no rows
    assert len(list(objects.iterdir())) == 2  # the dead attempt's objects and the retry's
    assert {r["worker"].split(":")[1].split("/")[0] for r in rows} != {str(pid) for pid in victims}
    out = tmp_path / "out"
    assert main(["restore", str(dst / "k"), str(out), "--model", str(tiny_model_path), "--quiet"]) == 0
    corpus.check_restored(src, out, kinds)


def test_driver_killed_then_resume(tmp_path, tiny_model_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    kinds = _images(src, 16)
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        "archive",
        str(src),
        str(dst),
        "--job-id",
        "d",
        "--steps",
        "2",
        "--shard-size",
        "2",
        "--model",
        str(tiny_model_path),
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    shards = dst / "d" / "manifest"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not (shards.exists() and len(list(shards.iterdir())) >= 2):
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    time.sleep(2)  # an orphaned worker may still land the shard it was writing
    finished = {p.name.split("-")[1] for p in shards.iterdir()}
    assert len(finished) < 8
    rc = subprocess.run([*cmd[:3], "resume", str(dst / "d"), "--quiet"], cwd=REPO, env=env, timeout=300).returncode
    assert rc == 0
    _exactly_once(dst / "d", kinds)
    names = [p.name.split("-")[1] for p in shards.iterdir()]
    assert set(names) == {f"{i:06d}" for i in range(8)}
    assert all(names.count(s) == 1 for s in finished)  # shards finished before the kill were not redone
    out = tmp_path / "out"
    rc = subprocess.run(
        [*cmd[:3], "restore", str(dst / "d"), str(out), "--model", str(tiny_model_path), "--quiet"],
        cwd=REPO,
        env=env,
        timeout=300,
    ).returncode
    assert rc == 0
    corpus.check_restored(src, out, kinds)


class _ThrottlingProxy(http.server.ThreadingHTTPServer):
    """Forwards to S3, but answers a run of requests with 503 SlowDown now and then."""

    daemon_threads = True

    def __init__(self, upstream: str, fail_every: int, burst: int) -> None:
        self.upstream, self.fail_every, self.burst = upstream, fail_every, burst
        self.counter = itertools.count()
        self.failed = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _handle(self) -> None:
        server: _ThrottlingProxy = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with server.lock:
            n = next(server.counter)
            throttle = n % server.fail_every < server.burst
            server.failed += throttle
        if throttle:
            payload = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        r = requests.request(self.command, server.upstream + self.path, data=body, headers=headers, timeout=30)
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(r.content)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


def test_throttling_storage_is_retried(ray_cluster, s3, tmp_path, tiny_model_path):  # noqa: F811
    _, options = s3
    proxy = _ThrottlingProxy(options["endpoint_url"], fail_every=10, burst=2)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        flaky = {**options, "endpoint_url": f"http://127.0.0.1:{proxy.server_address[1]}"}
        src = tmp_path / "src"
        src.mkdir()
        kinds = _images(src, 6)
        opts = json.dumps(flaky)
        rc = main(
            [
                "archive",
                str(src),
                "s3://archive/t",
                "--job-id",
                "t",
                "--steps",
                "0",
                "--shard-size",
                "2",
                "--model",
                str(tiny_model_path),
                "--storage-options",
                opts,
                "--quiet",
            ]
        )
        assert rc == 0 and proxy.failed > 5
        rows = manifest.load(Store("s3://archive/t/t", options)).to_pylist()
        assert sorted(r["source_key"] for r in rows) == sorted(kinds) and {r["status"] for r in rows} == {"ok"}
        out = tmp_path / "out"
        rc = main(
            [
                "restore",
                "s3://archive/t/t",
                str(out),
                "--model",
                str(tiny_model_path),
                "--storage-options",
                opts,
                "--quiet",
            ]
        )
        assert rc == 0
        corpus.check_restored(src, out, kinds)
    finally:
        proxy.shutdown()
