"""``callic verify`` (issue 19, item 3): every stored object checked against the manifest, in
packed and unpacked jobs, jobs of this version and of earlier ones."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.cli import main
from pipeline import manifest
from pipeline.storage import Store

FIXTURE_JOBS = Path(__file__).resolve().parent / "fixtures" / "jobs" / "2026-12-03" / "archive"


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:20, 0:24]
    for i in range(4):
        px = ((x * (i + 1) + y * 2)[..., None] + rng.integers(0, 10, (20, 24, 3))).astype(np.uint8)
        Image.fromarray(px).save(root / f"p{i}.png")
    (root / "raw.bin.jpg").write_bytes(_jpeg())  # passed through as it is
    return root


def _jpeg() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def jobs(ray_cluster, src, tiny_model_path, tmp_path_factory) -> Path:
    """An unpacked job ``u`` and a packed one ``p`` of the same images, made once; tests copy them."""
    dst = tmp_path_factory.mktemp("dst")
    common = ["--codec", "callic", "--steps", "0", "--model", str(tiny_model_path), "--quiet", "--shard-size", "3"]
    assert main(["archive", str(src), str(dst), "--job-id", "u", "--no-pack", *common]) == 0
    assert main(["archive", str(src), str(dst), "--job-id", "p", "--pack", *common]) == 0
    return dst


def _copy(jobs: Path, name: str, tmp_path: Path) -> Path:
    shutil.copytree(jobs / name, tmp_path / name)
    return tmp_path / name


def _verify(job: Path, capsys, *flags: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["verify", str(job), "--json", "--quiet", *flags])
    return rc, json.loads(capsys.readouterr().out)


def _rows(job: Path) -> dict[str, dict]:
    return {r["source_key"]: r for r in manifest.load(Store(str(job))).to_pylist() if r["status"] == "ok"}


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_intact_job_holds_packed_and_unpacked_and_decodes_in_full(jobs, tmp_path, capsys):
    for name in ("u", "p"):
        rc, report = _verify(jobs / name, capsys, "--full")
        assert rc == 0 and report["ok"], report
        assert report["images"] == 5 and report["decoded"] == 5 and report["length_only"] == 0
        assert report["problems"] == [] and report["orphans"] == []


def test_unpacked_job_flipped_truncated_deleted_and_orphan(jobs, tmp_path, capsys):
    job = _copy(jobs, "u", tmp_path)
    rows = _rows(job)
    _flip(job / rows["p0.png"]["output_key"], 20)
    trunc = job / rows["p1.png"]["output_key"]
    trunc.write_bytes(trunc.read_bytes()[:-3])
    (job / rows["p2.png"]["output_key"]).unlink()
    orphan = job / "objects" / "000000-deadbeef00" / "p9.png.cllc"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by an attempt that died")
    rc, report = _verify(job, capsys)
    assert rc == 10 and not report["ok"]
    found = {(p["source_key"], p["problem"]) for p in report["problems"]}
    assert found == {("p0.png", "altered"), ("p1.png", "truncated"), ("p2.png", "missing")}
    assert report["orphans"] == ["objects/000000-deadbeef00/p9.png.cllc"]


def test_packed_job_flipped_entry_truncated_pack_and_orphan_pack(jobs, tmp_path, capsys):
    job = _copy(jobs, "p", tmp_path)
    rows = _rows(job)
    first, second = sorted({r["output_key"] for r in rows.values()})  # 5 images in shards of 3
    in_first = sorted((r for r in rows.values() if r["output_key"] == first), key=lambda r: r["offset"])
    _flip(job / first, in_first[1]["offset"] + 5)  # one entry's bytes: that image only
    pack = job / second
    last = max((r for r in rows.values() if r["output_key"] == second), key=lambda r: r["offset"])
    pack.write_bytes(pack.read_bytes()[: last["offset"] + 2])  # its last entry and the index cut off
    (job / "data" / "shard-000009-0123456789.pack").write_bytes(b"CLPK")
    rc, report = _verify(job, capsys)
    assert rc == 10
    found = {(p["source_key"], p["problem"]) for p in report["problems"]}
    assert found == {(in_first[1]["source_key"], "altered"), (last["source_key"], "truncated")}
    assert report["orphans"] == ["data/shard-000009-0123456789.pack"]


def test_full_finds_what_only_decoding_can(jobs, tmp_path, capsys):
    """A row whose bytes are whole but whose pixel hash is not theirs (a manifest edited by
    hand): only decoding tells, and only with --full."""
    job = _copy(jobs, "u", tmp_path)
    for path in (job / "manifest").iterdir():
        table = manifest.from_bytes(path.read_bytes())
        rows = table.to_pylist()
        for r in rows:
            if r["source_key"] == "p3.png":
                r["pixel_hash"] = "00" * 32
        path.write_bytes(manifest.to_bytes(manifest.to_table(rows)))
    assert _verify(job, capsys)[0] == 0
    rc, report = _verify(job, capsys, "--full")
    assert rc == 10 and [(p["source_key"], p["problem"]) for p in report["problems"]] == [("p3.png", "undecodable")]


def test_prune_deletes_only_old_orphans(jobs, tmp_path, capsys):
    job = _copy(jobs, "u", tmp_path)
    old, young = job / "objects" / "x-1" / "old.cllc", job / "objects" / "x-2" / "young.cllc"
    for path in (old, young):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"orphan")
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(old, (week_ago, week_ago))
    rc, report = _verify(job, capsys, "--prune")  # default: older than 24 hours
    assert rc == 10 and report["pruned"] == ["objects/x-1/old.cllc"] and report["orphans"] == ["objects/x-2/young.cllc"]
    assert not old.exists() and young.exists()
    rc, report = _verify(job, capsys, "--prune", "--min-age-hours", "0")
    assert rc == 0 and report["pruned"] == ["objects/x-2/young.cllc"] and report["ok"]
    assert _verify(job, capsys, "--full")[1]["decoded"] == 5  # nothing the job holds was touched


@pytest.mark.parametrize("name", ["files", "packed"])
def test_jobs_from_before_object_hashes_are_checked_for_what_they_have(name, ray_cluster, tmp_path, capsys):
    job = tmp_path / name
    shutil.copytree(FIXTURE_JOBS / name, job)
    rc, report = _verify(job, capsys)
    assert rc == 0 and report["images"] > 0
    rows = list(_rows(job).values())
    # packed entries against the pack's own index, passed-through files against their source hash
    expected_length_only = sum(r["offset"] is None and r["codec"] != "passthrough" for r in rows)
    assert report["length_only"] == expected_length_only
    if name == "packed":
        r = rows[0]
        _flip(job / r["output_key"], r["offset"] + 3)
        rc, report = _verify(job, capsys)
        assert rc == 10 and [(p["source_key"], p["problem"]) for p in report["problems"]] == [
            (r["source_key"], "altered")
        ]


def test_a_folder_that_is_no_job_is_named(tmp_path, capsys):
    assert main(["verify", str(tmp_path), "--quiet"]) == 8
    assert str(tmp_path) in capsys.readouterr().err


def test_crafted_rows_are_refused_and_nothing_outside_the_job_is_read(jobs, tmp_path, capsys):
    """A manifest row naming a key outside the job's objects, and an object replaced by a symlink
    to /dev/zero (reading it would never end), are reported as unsafe: verify reads neither."""
    job = _copy(jobs, "u", tmp_path)
    rows = _rows(job)
    link = job / rows["p1.png"]["output_key"]
    link.unlink()
    link.symlink_to("/dev/zero")
    for path in (job / "manifest").iterdir():
        table = manifest.from_bytes(path.read_bytes()).to_pylist()
        for r in table:
            if r["source_key"] == "p0.png":
                r["output_key"] = "../../../../etc/passwd"
        path.write_bytes(manifest.to_bytes(manifest.to_table(table)))
    rc, report = _verify(job, capsys, "--full")
    assert rc == 10
    found = {(p["source_key"], p["problem"]) for p in report["problems"]}
    assert found == {("p0.png", "unsafe"), ("p1.png", "unsafe")}
    assert report["decoded"] == 3  # the other images still checked and decoded
