"""What a job reads and writes about its sources: no credentials stored or printed, and one bad
source entry (a FIFO, a device, a link loop, an oversized file) is one failed row, never a hung
or exhausted worker."""

from __future__ import annotations

import errno
import functools
import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.cli import main
from pipeline import manifest
from pipeline.storage import Store, is_transient, redact

SECRET = "s3cr3t-Pa55"
DEADLINE_S = 120  # a hang fails the test instead of the CI run


def _images(root: Path) -> list[str]:
    """Two small RGB PNGs in ``root``; their keys."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for key in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / key)
    return ["a.png", "b.png"]


def _run_with_deadline(argv: list[str]) -> int:
    """``main(argv)`` in a thread; fails the test if it has not returned within DEADLINE_S."""
    result: list[int | BaseException] = []

    def target() -> None:
        try:
            result.append(main(argv))
        except BaseException as exc:  # handed to the test's thread
            result.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"callic {argv[0]} hung for {DEADLINE_S} s"
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test's captured output stays the CLI's
        pass


@pytest.fixture
def http_src(tmp_path):
    """A folder of images served over HTTP on loopback (the server ignores the credentials)."""
    root = tmp_path / "served"
    keys = _images(root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://reader:{SECRET}@127.0.0.1:{server.server_address[1]}", len(keys)
    server.shutdown()
    server.server_close()


def test_credentials_in_src_url_are_never_written_or_printed(ray_cluster, http_src, tmp_path, tiny_model_path, capsys):
    url, n = http_src
    dst = tmp_path / "dst"
    dst.mkdir()
    argv = [
        "archive",
        f"{url}/*.png",
        str(dst),
        "--job-id",
        "c",
        "--steps",
        "0",
        "--model",
        str(tiny_model_path),
        "--log-json",
        "-v",
    ]
    assert main(argv) == 0
    spec = json.loads((dst / "c" / "job.json").read_text())
    assert spec["src"].startswith("http://127.0.0.1:")  # stored without user:password
    assert main(["status", str(dst / "c")]) == 0
    printed = capsys.readouterr()
    assert main(["status", str(dst / "c"), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["ok"] == n
    assert SECRET not in printed.out + printed.err + out
    for path in (dst / "c").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_redact_and_strip_cover_userinfo_and_signed_urls():
    from pipeline.storage import strip_credentials

    signed = f"https://u:{SECRET}@h.example/b/k.png?X-Amz-Credential={SECRET}&X-Amz-Signature={SECRET}&v=1&sig={SECRET}"
    assert strip_credentials(signed) == "https://h.example/b/k.png?v=1"
    assert SECRET not in redact(f"error: GET {signed} -> 403") and "h.example/b/k.png" in redact(signed)
    assert strip_credentials("/local/path/x.png") == "/local/path/x.png"
    assert SECRET not in repr(Store(f"s3://AKIA:{SECRET}@bucket/x"))


def test_fifo_device_and_link_loop_are_failed_rows_and_resume_does_not_hang(ray_cluster, tmp_path, tiny_model_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    good = _images(src)
    os.mkfifo(src / "x.png")
    (src / "z.png").symlink_to("/dev/zero")
    (src / "loop1.png").symlink_to(src / "loop2.png")
    (src / "loop2.png").symlink_to(src / "loop1.png")
    (src / "link.png").symlink_to(src / good[0])  # a link to a regular file is fine
    dst.mkdir()
    args = ["--steps", "0", "--model", str(tiny_model_path), "--quiet"]
    assert _run_with_deadline(["archive", str(src), str(dst), "--job-id", "f", *args]) == 10
    rows = {r["source_key"]: r for r in manifest.load(Store(dst / "f")).to_pylist()}
    assert {k for k, r in rows.items() if r["status"] == "ok"} == {*good, "link.png"}
    bad = {k: r["error"] for k, r in rows.items() if r["status"] == "failed"}
    assert set(bad) == {"x.png", "z.png", "loop1.png", "loop2.png"}
    assert "x.png: not a regular file (a FIFO)" in bad["x.png"]
    assert "z.png: not a regular file (a character device)" in bad["z.png"]
    assert "loop1.png: a loop of symbolic links" in bad["loop1.png"]
    # Not a regular file is permanent: a plain resume leaves them; --retry-failed tries again, without hanging.
    assert _run_with_deadline(["resume", str(dst / "f"), "--quiet"]) == 10
    rows = manifest.load(Store(dst / "f")).to_pylist()
    assert {r["source_key"]: r["attempt"] for r in rows if r["status"] == "failed"} == dict.fromkeys(bad, 1)
    assert _run_with_deadline(["resume", str(dst / "f"), "--retry-failed", "--quiet"]) == 10
    rows = manifest.load(Store(dst / "f")).to_pylist()
    assert {r["source_key"]: r["attempt"] for r in rows if r["status"] == "failed"} == dict.fromkeys(bad, 2)


def test_source_reads_are_capped(tmp_path):
    from pipeline.storage import SourceError

    (tmp_path / "big.png").write_bytes(b"x" * 1001)
    (tmp_path / "ok.png").write_bytes(b"y" * 1000)
    store = Store(tmp_path)
    assert store.read_source("ok.png", 1000, 5) == b"y" * 1000
    with pytest.raises(SourceError, match="big.png: 1001 bytes, over the 1000-byte limit"):
        store.read_source("big.png", 1000, 5)
    mem = Store("memory://capped")
    mem.write("big.png", b"x" * 1001)
    with pytest.raises(SourceError, match="big.png: larger than the 1000-byte limit"):
        mem.read_source("big.png", 1000, 5)
    assert mem.read_source("big.png", 1001, 5) == b"x" * 1001


def test_a_link_loop_is_not_retried():
    assert not is_transient(OSError(errno.ELOOP, "Too many levels of symbolic links"))


def test_an_object_store_read_that_never_answers_times_out():
    """A server that accepts the connection and then says nothing: the read fails after the
    timeout (one failed row; ``resume`` tries again) instead of holding a worker forever."""
    from pipeline.storage import SourceError

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    store = Store(f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        start = time.monotonic()
        with pytest.raises(SourceError, match=r"x.png: no answer within 1 s"):
            store.read_source("x.png", 1000, 1.0)
        assert time.monotonic() - start < 10
    finally:
        for s in (*accepted, listener):
            s.close()
