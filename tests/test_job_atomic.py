"""Creating a job, and write-once objects, under races: of many processes creating the same job
(or object) at the same moment exactly one wins, and the losers change nothing it wrote; on a
local disk and on S3 (moto's server on loopback, which honours If-None-Match like AWS). Also
source reads from S3: capped, and empty objects read as empty."""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
import requests
from moto.server import ThreadedMotoServer

from pipeline import job
from pipeline.storage import StorageError, Store

RACERS = 32


def _race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """``fn(i)`` for i < n in n threads released together; each one's result or exception. The
    interpreter switches threads every microsecond meanwhile, so that they interleave like processes."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(interval)
    return out


def _spec(i: int, n_images: int) -> job.JobSpec:
    return job.JobSpec(
        job_id="same",
        src=f"/src/{i}",
        dst="/dst",
        codec={"codec": "callic"},
        shard_size=2,
        pack=False,
        verify=True,
        max_attempts=3,
        model_hash="m",
        code_version="t",
        n_images=n_images,
        n_shards=(n_images + 1) // 2,
    )


def _items(i: int) -> list[tuple[str, int]]:
    """Each racer lists a different number of sources, so a mixed-up folder shows."""
    return [(f"racer{i}/img{k}.png", k) for k in range(1 + i % 7)]


def _create_race(store_for: Callable[[], Store]) -> None:
    def create(i: int) -> str:
        items = _items(i)
        job.create(store_for(), _spec(i, len(items)), job.shards_table(items, 2))
        return f"/src/{i}"

    results = _race(RACERS, create)
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1, results
    assert all(isinstance(r, job.JobError) and "exists already" in str(r) for r in results if r not in winners)
    spec, sources = job.load(store_for())
    i = int(winners[0].rsplit("/", 1)[1])
    assert spec.src == winners[0] and sources["source_key"].to_pylist() == [k for k, _ in _items(i)]
    listed = [k for k in store_for().list() if k.startswith("sources")]
    assert listed == [spec.sources]  # the losers removed their own sources lists


def test_concurrent_creates_of_one_job_on_disk(tmp_path):
    _create_race(lambda: Store(tmp_path / "dst" / "same"))


@pytest.mark.parametrize("round_", range(4))  # a race lost only sometimes still shows
def test_write_once_race_on_disk(tmp_path, round_):
    store = Store(tmp_path)
    results = _race(RACERS, lambda i: store.write_once("k.bin", f"racer {i}".encode()) or i)
    winners = [r for r in results if isinstance(r, int)]
    assert len(winners) == 1 and store.read("k.bin") == f"racer {winners[0]}".encode()
    assert all(isinstance(r, StorageError) and "exists already" in str(r) for r in results if r not in winners)
    assert store.list() == ["k.bin"]  # no temporary files left


def test_version_1_job_folders_still_load(tmp_path):
    """Jobs written before the sources list was named in the spec: ``sources.parquet``."""
    items = [("a.png", 3), ("b.png", 4)]
    buf = io.BytesIO()
    pq.write_table(job.shards_table(items, 1), buf)
    (tmp_path / "sources.parquet").write_bytes(buf.getvalue())
    raw = json.loads(_spec(0, 2).to_json())
    for key in ("sources", "max_source_bytes", "read_timeout_s"):
        del raw[key]
    (tmp_path / "job.json").write_text(json.dumps({**raw, "version": 1}))
    spec, sources = job.load(Store(tmp_path))
    assert spec.sources == "sources.parquet" and sources["source_key"].to_pylist() == ["a.png", "b.png"]
    (tmp_path / "job.json").write_text(json.dumps({**raw, "version": 2, "sources": "../../etc/x.parquet"}))
    with pytest.raises(job.JobError, match="as its sources list"):
        job.load(Store(tmp_path))


@pytest.fixture(scope="module")
def s3_options():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    requests.post(f"{url}/moto-api/reset", timeout=10)
    boto3.client(
        "s3", endpoint_url=url, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    ).create_bucket(Bucket="archive")
    yield {"key": "k", "secret": "s", "endpoint_url": url}
    server.stop()


def test_concurrent_creates_of_one_job_on_s3(s3_options, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _create_race(lambda: Store("s3://archive/dst/same", s3_options))


def test_write_once_on_s3_is_a_conditional_put(s3_options, monkeypatch):
    """The existence check before the put is not what refuses: the put itself is conditional."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = Store("s3://archive/cond", s3_options)
    store.write_once("k.bin", b"first")
    monkeypatch.setattr(type(store.fs), "exists", lambda self, path, **kw: False)
    with pytest.raises(StorageError, match="exists already"):
        store.write_once("k.bin", b"second")
    assert store.read("k.bin") == b"first"


def test_source_reads_on_s3_are_capped_and_take_empty_objects(s3_options, monkeypatch):
    """Source reads are one ranged GET of at most cap + 1 bytes; S3 refuses such a range on an
    empty object (416), which is an empty source, not a storage failure."""
    from pipeline.storage import SourceError

    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = Store("s3://archive/src", s3_options)
    store.write("empty.png", b"")
    store.write("big.png", b"x" * 11)
    assert store.read_source("empty.png", 10, 30) == b""
    assert store.read_source("big.png", 11, 30) == b"x" * 11
    with pytest.raises(SourceError, match="big.png: larger than the 10-byte limit"):
        store.read_source("big.png", 10, 30)
