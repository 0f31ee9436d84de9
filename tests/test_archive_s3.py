"""Archive and restore through S3: moto's server on loopback (real HTTP, real s3fs and botocore),
reset for every test; Ray workers reach it like any S3 endpoint."""

from __future__ import annotations

import json
import socket

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from jobs.cli import main
from pipeline import manifest
from pipeline.storage import Store
from tests import corpus

CREDS = {"key": "testing", "secret": "testing"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_url():
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_url, monkeypatch):
    """A fresh S3 with one bucket; storage options as a user would pass them."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    requests.post(f"{moto_url}/moto-api/reset", timeout=10)
    client = boto3.client(
        "s3",
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="archive")
    return client, {**CREDS, "endpoint_url": moto_url}


def test_s3_to_s3_archive_and_restore(ray_cluster, s3, tmp_path, tiny_model_path, capsys):
    client, options = s3
    root = tmp_path / "corpus"
    kinds = corpus.build(root)
    for path in root.rglob("*"):
        if path.is_file():
            client.put_object(Bucket="archive", Key=f"photos/{path.relative_to(root)}", Body=path.read_bytes())
    opts = json.dumps(options)
    rc = main(
        [
            "archive",
            "s3://archive/photos",
            "s3://archive/backup",
            "--job-id",
            "s3job",
            "--steps",
            "0",
            "--workers",
            "2",
            "--shard-size",
            "3",
            "--model",
            str(tiny_model_path),
            "--storage-options",
            opts,
            "--quiet",
        ]
    )
    assert rc == 10  # the two bad files
    assert "testing" not in capsys.readouterr().err  # credentials never printed
    spec = client.get_object(Bucket="archive", Key="backup/s3job/job.json")["Body"].read().decode()
    assert "testing" not in spec and json.loads(spec)["pack"] is True  # object store: packed by default
    job = Store("s3://archive/backup/s3job", options)
    rows = manifest.load(job).to_pylist()
    assert sorted(r["source_key"] for r in rows) == sorted(kinds)
    assert len({r["worker"] for r in rows if r["worker"]}) == 2  # both workers took shards
    assert {r["source_key"]: r["codec"] for r in rows}["photo.jpg"] == "passthrough"  # JPEGs by default
    packs = {r["output_key"] for r in rows if r["status"] == "ok"}
    assert len(packs) == len(job.list("data"))  # one object per shard, not per image

    out = tmp_path / "out"
    assert (
        main(
            [
                "restore",
                "s3://archive/backup",
                str(out),
                "--model",
                str(tiny_model_path),
                "--storage-options",
                opts,
                "--quiet",
            ]
        )
        == 0
    )
    corpus.check_restored(root, out / "s3job", kinds)  # several-job layout: OUT/JOB/key


def test_missing_bucket_and_credentials_fail_before_work(ray_cluster, s3, tmp_path, capsys):
    _, options = s3
    root = tmp_path / "corpus"
    corpus.build(root)
    rc = main(["archive", str(root), "s3://nobucket/x", "--storage-options", json.dumps(options), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 7 and "cannot write to s3://nobucket/x" in err and "bucket" in err, err
    no_creds = {"endpoint_url": options["endpoint_url"]}
    rc = main(["archive", str(root), "s3://archive/x", "--storage-options", json.dumps(no_creds), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 7 and "cannot" in err and "Credentials" in err, err
    assert main(["status", "s3://archive/x/nojob", "--storage-options", json.dumps(options)]) == 8
