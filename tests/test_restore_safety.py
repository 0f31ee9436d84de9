"""Restore reads only the job's own objects and writes only new files inside OUT (issue 14).

A manifest is storage someone else may control: a crafted row must not make restore read a file
outside the job (finding 3), and OUT may already hold files and symlinks that restore must neither
replace nor write through (finding 11). Names legal on Linux (a backslash, a colon) archive and
restore exactly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.archivecodec import ArchiveCodecFactory, CodecSettings
from jobs.cli import main
from pipeline import job, manifest, restore
from pipeline.items import Encoded
from pipeline.shard import ShardTask, run_shard
from pipeline.storage import Store
from tests import corpus

SECRET = b"TOPSECRET-4f2a9"


def _png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(path)


NAMES = ["a.png", "back\\slash.png", "c:colon.png", "sub/x.png"]


@pytest.fixture(scope="module")
def archived(ray_cluster, tmp_path_factory, tiny_model_path) -> tuple[Path, Path]:
    """(SRC, job folder) of a small job whose names include a backslash and a colon."""
    root = tmp_path_factory.mktemp("names")
    src, dst = root / "src", root / "dst"
    for i, name in enumerate(NAMES):
        _png(src / name, i)
    dst.mkdir()
    args = ["archive", str(src), str(dst), "--job-id", "n", "--steps", "0", "--model", str(tiny_model_path), "--quiet"]
    assert main(args) == 0
    return src, dst / "n"


def _restore(job_dir: Path, out: Path, model: Path, *flags: str) -> int:
    return main(["restore", str(job_dir), str(out), "--model", str(model), "--quiet", *flags])


# ---------------------------------------------------------------- finding 3: reads outside the job


def _leak_rows(outside: Path) -> list[dict]:
    """What an attacker writes: rows pointing out of the job, one guessed byte (or the whole
    file's hash) each, so that a restore that reads them says which guess was right."""
    now = dt.datetime.now(dt.UTC)
    base = {"job": "j", "shard": 0, "status": "ok", "codec": "passthrough", "format": "PNG", "attempt": 1, "time": now}
    secret = str(outside / "secret.txt")
    rows = []
    for i in range(2):
        for guess in range(256):
            sha = hashlib.sha256(bytes([guess])).hexdigest()
            for key in ("../../outside/secret.txt", secret, "objects/000000-abc/../../../outside/secret.txt"):
                rows.append(
                    {
                        **base,
                        "source_key": f"leak/{len(rows)}.bin",
                        "output_key": key,
                        "offset": i,
                        "length": 1,
                        "source_sha256": sha,
                    }
                )
    whole = hashlib.sha256(SECRET).hexdigest()
    for key, offset in (
        ("objects/000000-abc/secret.txt", None),
        ("data/shard-000000-abc.pack", 0),
        ("../../outside/secret.txt", None),
        (secret, None),
    ):
        rows.append(
            {
                **base,
                "source_key": f"leak/{len(rows)}.bin",
                "output_key": key,
                "offset": offset,
                "length": len(SECRET),
                "source_sha256": whole,
            }
        )
    return rows


def test_crafted_manifest_reads_nothing_outside_the_job(ray_cluster, tmp_path, tiny_model_path, capsys):
    outside, job_dir, out = tmp_path / "outside", tmp_path / "dst" / "j", tmp_path / "out"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (job_dir / "objects").mkdir(parents=True)
    (job_dir / "data").mkdir()
    os.symlink(outside, job_dir / "objects" / "000000-abc")  # a folder of the job that leads out
    os.symlink(outside / "secret.txt", job_dir / "data" / "shard-000000-abc.pack")
    (job_dir / job.SPEC).write_text("{}")
    rows = _leak_rows(outside)
    manifest.write_shard(Store(job_dir), 0, "evil", rows)
    factory = ArchiveCodecFactory(CodecSettings(model=str(tiny_model_path)))
    s = restore.run(Store(job_dir), Store(out), factory, None, None, 0.0, show_progress=False)
    captured = capsys.readouterr()
    assert not [p for p in out.rglob("*") if p.is_file()]
    assert (s.restored, s.failed) == (0, len(rows))
    # Every row refused before any read: no other error, nothing of the secret anywhere.
    assert all("UnsafeKeyError" in e for e in s.errors), [e for e in s.errors if "UnsafeKeyError" not in e][:3]
    assert not any(SECRET.decode()[:4] in text for text in [*s.errors, captured.out, captured.err])


def _row(**fields) -> dict:
    return {
        "output_key": "objects/000003-0a1b2c3d4e/cats/a.png.cllc",
        "offset": None,
        "length": 10,
        "codec": "callic",
        "format": "PNG",
        **fields,
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"output_key": "../../outside/secret.txt"},
        {"output_key": "/etc/passwd"},
        {"output_key": "manifest/shard-000000-abc.parquet"},  # of the job, but not a stored image
        {"output_key": "objects/000000-abc/../../job.json"},
        {"output_key": "objects/000000-abc//a.png"},
        {"output_key": "objects/000000-abc/a\0.png"},
        {"output_key": "objects/../x/a.png"},
        {"output_key": "data/shard-000000-abc.pack/../../x"},
        {"output_key": "data/shard-000000-abc.pack", "offset": None},
        {"output_key": "data/shard-000000-abc.pack", "offset": -1},
        {"output_key": "data/shard-000000-abc.pack", "offset": 0, "length": -5},
        {"output_key": "data/shard-000000-abc.pack", "offset": 0, "length": None},
        {"offset": 4},  # a range in a one-image object
        {"length": 1 << 40},
        {"output_key": None},
        {"codec": "../x"},
        {"format": "PNG/../../x"},
    ],
)
def test_rows_pointing_elsewhere_are_refused(fields):
    with pytest.raises(restore.UnsafeKeyError, match="refused"):
        restore.check_row(_row(**fields), portable=False)


class _StoreAsIs:
    batch_size = 2
    model_hash = ""

    def encode_batch(self, items, verify):
        return [Encoded(data, ".cllc", {"codec": "callic", "format": "PNG"}) for _, data in items]


@pytest.mark.parametrize("pack", [False, True])
def test_rows_the_shard_writer_writes_are_accepted(tmp_path, pack):
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "job")
    keys = ["a.png", "back\\slash.png", "c:colon.png", "deep/er/b.png"]
    for key in keys:
        src.write(key, b"bytes of " + key.encode())
    run_shard(ShardTask("j", 7, keys, {k: 1 for k in keys}, pack, False), src, dst, _StoreAsIs())
    rows = manifest.read_all(dst).to_pylist()
    assert len(rows) == len(keys) and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        restore.check_row(row, portable=False)
        assert restore.read_object(dst, row) == b"bytes of " + row["source_key"].encode()


# ---------------------------------------------------------------- finding 11: names and OUT


def test_names_with_backslash_and_colon_round_trip(archived, tmp_path, tiny_model_path):
    src, job_dir = archived
    out = tmp_path / "out"
    assert _restore(job_dir, out, tiny_model_path) == 0
    corpus.check_restored(src, out, dict.fromkeys(NAMES, "pixels"))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(NAMES)


def test_restore_never_replaces_files_nor_follows_symlinks(archived, tmp_path, tiny_model_path):
    src, job_dir = archived
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "a.png").write_bytes(b"the user's own file")
    os.symlink(elsewhere, out / "sub")  # restoring sub/x.png must not write into elsewhere/
    assert _restore(job_dir, out, tiny_model_path) == 10
    assert (out / "a.png").read_bytes() == b"the user's own file"
    assert list(elsewhere.iterdir()) == []
    corpus.check_restored(src, out, {"c:colon.png": "pixels", "back\\slash.png": "pixels"})

    (out / "sub").unlink()
    assert _restore(job_dir, out, tiny_model_path, "--overwrite") == 0  # files with the same bytes stay as they are
    corpus.check_restored(src, out, dict.fromkeys(NAMES, "pixels"))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(NAMES)


def test_place_checks_every_folder_and_file_under_out(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "victim.png").write_bytes(b"keep")
    os.symlink(elsewhere / "victim.png", out / "link.png")
    os.symlink(elsewhere, out / "d")
    store, keep, replace = Store(out), restore.OutputPolicy(False, "r1"), restore.OutputPolicy(True, "r1")
    for policy in (keep, replace):
        with pytest.raises(restore.UnsafeKeyError, match="symlink"):
            restore.place(store, "link.png", b"new", policy)
        with pytest.raises(restore.UnsafeKeyError, match="symlink"):
            restore.place(store, "d/x/y.png", b"new", policy)
    assert (elsewhere / "victim.png").read_bytes() == b"keep" and sorted(os.listdir(elsewhere)) == ["victim.png"]
    assert restore.place(store, "new/f.png", b"data", keep) == 4
    assert restore.place(store, "new/f.png", b"data", keep) == 0  # already there, the same bytes
    with pytest.raises(restore.OutputExistsError, match="--overwrite"):
        restore.place(store, "new/f.png", b"other", keep)
    assert restore.place(store, "new/f.png", b"other", replace) == 5
    assert (out / "new" / "f.png").read_bytes() == b"other"
    assert sorted(os.listdir(out / "new")) == ["f.png"]  # no temporary left behind
