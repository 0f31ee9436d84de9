"""The pipeline's parts without Ray: storage retries and write-once, packs, manifest compaction,
pending work, source listing, restore key safety."""

from __future__ import annotations

import datetime as dt
import os

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from codec.errors import CorruptFileError
from pipeline import job, manifest, pack
from pipeline.driver import pending_tasks
from pipeline.restore import UnsafeKeyError, safe_key
from pipeline.storage import RetryPolicy, StorageError, Store, is_transient, redact

FAST = RetryPolicy(attempts=4, first_delay_s=0.001, max_delay_s=0.002)


class FlakyMemoryFS(MemoryFileSystem):
    """Memory filesystem whose reads and writes fail ``failures`` times first (like a throttling
    object store), counting every call."""

    protocol = "flakymem"

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("flakymem://"))

    failures = 0
    calls = 0
    options: dict = {}  # the storage options the last instance was made with

    def __init__(self, *args, **storage_options):
        super().__init__(*args, **storage_options)
        type(self).options = dict(storage_options)

    def cat_file(self, path, start=None, end=None, **kwargs):
        type(self).calls += 1
        if type(self).failures > 0:
            type(self).failures -= 1
            raise ConnectionError("connection reset by peer")
        return super().cat_file(path, start=start, end=end, **kwargs)

    def pipe_file(self, path, value, **kwargs):
        type(self).calls += 1
        if type(self).failures > 0:
            type(self).failures -= 1
            raise OSError("503 Slow Down")
        return super().pipe_file(path, value, **kwargs)


class ReadOnlyMemoryFS(MemoryFileSystem):
    """Like a bucket the credentials may only read."""

    protocol = "romem"

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("romem://"))

    def pipe_file(self, path, value, **kwargs):
        raise PermissionError(f"Access Denied: {path}")


fsspec.register_implementation("flakymem", FlakyMemoryFS, clobber=True)
fsspec.register_implementation("romem", ReadOnlyMemoryFS, clobber=True)


@pytest.fixture
def flaky():
    FlakyMemoryFS.store.clear()
    FlakyMemoryFS.failures = FlakyMemoryFS.calls = 0
    return Store("flakymem://bucket/job", policy=FAST)


def test_transient_errors_are_retried(flaky):
    FlakyMemoryFS.failures = 3
    flaky.write("a/b.bin", b"hello")
    assert FlakyMemoryFS.failures == 0 and FlakyMemoryFS.calls == 4
    FlakyMemoryFS.failures = 2
    assert flaky.read("a/b.bin") == b"hello"


def test_retries_give_up_with_a_storage_error(flaky):
    FlakyMemoryFS.failures = 10
    with pytest.raises(StorageError, match="write flakymem://bucket/job/x failed"):
        flaky.write("x", b"1")
    assert FlakyMemoryFS.calls == FAST.attempts


def test_permanent_errors_are_not_retried():
    assert not is_transient(PermissionError("denied"))
    assert not is_transient(FileNotFoundError("gone"))
    assert not is_transient(OSError(28, "No space left on device"))
    assert is_transient(ConnectionError("reset")) and is_transient(TimeoutError())


def test_s3_errors_are_told_apart_by_botocore_s_classes_and_codes():
    """No retry for missing credentials or a refused key, also when wrapped (``raise ... from``);
    throttling and a slow endpoint are retried; S3 stores get botocore's standard retry mode."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    from pipeline.storage import S3_RETRIES, fs_options

    def client_error(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}}, "PutObject")

    assert not is_transient(NoCredentialsError())
    assert not is_transient(client_error("InvalidAccessKeyId"))
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = client_error("SignatureDoesNotMatch")
    assert not is_transient(wrapped)
    assert is_transient(client_error("SlowDown")) and is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert fs_options("s3://b/k", {})["config_kwargs"]["retries"] == S3_RETRIES
    mine = {"config_kwargs": {"retries": {"max_attempts": 1}}}
    assert fs_options("s3://b/k", mine) == mine and fs_options("/tmp/x", {}) == {}


def test_write_once_never_replaces(tmp_path):
    store = Store(tmp_path)
    store.write_once("k/v.bin", b"first")
    with pytest.raises(StorageError, match="exists already"):
        store.write_once("k/v.bin", b"second")
    assert store.read("k/v.bin") == b"first"
    assert store.list() == ["k/v.bin"]  # no temporary files left behind


def test_check_writable_fails_clearly(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        Store(tmp_path / "missing" / "dst").check_writable()
    ReadOnlyMemoryFS.store.clear()
    ReadOnlyMemoryFS.pseudo_dirs[:] = [""]
    ReadOnlyMemoryFS().mkdir("/bucket")
    with pytest.raises(StorageError, match="cannot write to romem://bucket/dst: PermissionError"):
        Store("romem://bucket/dst", policy=FAST).check_writable()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores permission bits
            pytest.skip("running as root: a read-only folder is still writable")
        with pytest.raises(StorageError, match="cannot write"):
            Store(ro).check_writable()
    finally:
        ro.chmod(0o755)


def test_redact_hides_credentials():
    assert redact("s3://AKIA:secret@bucket/x") == "s3://***@bucket/x"
    assert "secret" not in repr(Store("memory://b", {"secret": "hunter2"}))


def test_pack_round_trip_and_damage():
    w = pack.PackWriter()
    spans = {name: w.add(name, data) for name, data in [("a.png", b"x" * 10), ("b/c.png", b""), ("d", b"yz")]}
    data = w.getvalue()
    for name, (offset, length) in spans.items():
        assert pack.entry(data, name) == data[offset : offset + length]
    assert pack.entry(data, "d") == b"yz"
    with pytest.raises(CorruptFileError):
        pack.read_index(data[:-3])
    with pytest.raises(CorruptFileError):
        pack.read_index(b"JUNK" + data[4:])
    bad = bytearray(data)
    bad[spans["a.png"][0]] ^= 1
    with pytest.raises(CorruptFileError, match="digest"):
        pack.entry(bytes(bad), "a.png")


def _row(key, status, attempt, minute):
    return {
        "job": "j",
        "shard": 0,
        "source_key": key,
        "status": status,
        "attempt": attempt,
        "time": dt.datetime(2026, 1, 1, 0, minute, tzinfo=dt.UTC),
        "error": None if status == "ok" else "boom",
    }


def test_compaction_keeps_one_row_per_image():
    rows = manifest.to_table(
        [
            _row("a", "ok", 1, 1),
            _row("a", "ok", 2, 2),  # shard ran twice (a worker died after its manifest)
            _row("b", "ok", 1, 1),
            _row("b", "failed", 2, 5),  # a later failure never hides a success
            _row("c", "failed", 1, 1),
            _row("c", "failed", 2, 3),
        ]
    )
    out = manifest.compact(rows).to_pylist()
    assert [(r["source_key"], r["status"], r["attempt"]) for r in out] == [
        ("a", "ok", 2),
        ("b", "ok", 1),
        ("c", "failed", 2),
    ]
    assert manifest.from_bytes(manifest.to_bytes(rows)).num_rows == 6


def test_pending_work_from_the_manifest():
    items = [(f"img{i}.png", 10) for i in range(5)]
    sources = job.shards_table(items, 2)
    assert sources["shard"].to_pylist() == [0, 0, 1, 1, 2]
    spec = job.JobSpec("j", "src", "dst", {}, 2, True, True, 2, "m", "v", n_images=5, n_shards=3)
    rows = manifest.to_table(
        [_row("img0.png", "ok", 1, 1), _row("img1.png", "failed", 1, 1), _row("img2.png", "failed", 2, 1)]
    )
    tasks = pending_tasks(spec, sources, rows)
    assert [(t.shard, t.keys) for t in tasks] == [(0, ["img1.png"]), (1, ["img3.png"]), (2, ["img4.png"])]
    assert tasks[0].attempts == {"img1.png": 2}  # img2 failed max_attempts times: given up
    assert pending_tasks(spec, sources, manifest.SCHEMA.empty_table())[0].attempts == {"img0.png": 1, "img1.png": 1}


def test_listing_folders_and_globs(tmp_path):
    for name in ["a.png", "sub/b.png", "sub/deep/c.jpg", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"12345")
    store, items = job.list_sources(str(tmp_path), {}, (".png", ".jpg"))
    assert store.url == str(tmp_path) and items == [("a.png", 5), ("sub/b.png", 5), ("sub/deep/c.jpg", 5)]
    store, items = job.list_sources(f"{tmp_path}/sub/*.png", {}, (".png",))
    assert store.url == f"{tmp_path}/sub" and items == [("b.png", 5)]
    _, items = job.list_sources(f"{tmp_path}/**/*.png", {}, (".png",))
    assert [k for k, _ in items] == ["a.png", "sub/b.png"]
    with pytest.raises(job.JobError, match="does not exist"):
        job.list_sources(str(tmp_path / "nope"), {}, (".png",))


@pytest.mark.parametrize("key", ["../x.png", "/etc/passwd", "a/../../b", "a//b", "C:/x", "a\\..\\b", "", ".", "a/./b"])
def test_restore_refuses_keys_that_escape(key):
    with pytest.raises(UnsafeKeyError):
        safe_key(key)


def test_restore_accepts_plain_keys():
    assert safe_key("cats/tabby.png") == "cats/tabby.png"
    assert safe_key("..hidden/x..png") == "..hidden/x..png"


def test_bench_and_train_read_and_write_urls_through_store(tmp_path, tiny_model_path):
    """``bench`` and ``train`` take ``--storage-options`` and reach their URLs through ``Store``:
    the options get to the filesystem, and a throttling store's failures are retried."""
    import io

    import numpy as np
    from PIL import Image

    from jobs.cli import main
    from tests.conftest import SAMPLES

    FlakyMemoryFS.store.clear()
    FlakyMemoryFS.failures = 0
    for name in ("a.png", "b.png"):
        px = np.asarray(Image.open(SAMPLES / "kodim23-crop.png").convert("RGB"))[:72, :72]
        buf = io.BytesIO()
        Image.fromarray(px if name == "a.png" else px[::-1]).save(buf, format="PNG")
        FlakyMemoryFS().pipe_file(f"/data/{name}", buf.getvalue())
    options = ["--storage-options", '{"region": "somewhere"}']
    FlakyMemoryFS.failures = 2  # the first reads fail as a throttling store's would
    out = tmp_path / "bench"
    assert main(["bench", "flakymem://data", "--codecs", "png", "--out", str(out), "-q", *options]) == 0
    rows = (out / "rows.jsonl").read_text().splitlines()[1:]
    assert len(rows) == 2 and all('"verified": true' in r for r in rows)
    assert FlakyMemoryFS.options == {"region": "somewhere"}

    FlakyMemoryFS.failures = 3  # reads of the data and writes of the run alike
    run = ["train", "flakymem://data", "--out", "flakymem://run", "--config", "tiny", "--steps", "2", "--batch", "2"]
    assert main([*run, "--threads", "1", "--device", "cpu", "--val-every", "1000", "-q", *options]) == 0
    assert "/run/checkpoint.pt" in FlakyMemoryFS.store and "/run/log.csv" in FlakyMemoryFS.store
    assert FlakyMemoryFS.failures == 0
