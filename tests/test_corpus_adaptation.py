"""Corpus adaptation (issue 19, item 1): a corpus-adapted model file (adapters over a base named by
hash), refused when it is damaged or crafted; ``archive --adapt-corpus`` codes a job with it when
it pays, keeps it (and its base) in the job folder, and restores and resumes with it elsewhere."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import codec
from codec.errors import CallicError, CorruptFileError, ModelNotFoundError
from codec.mgcf.adapters import AdapterSet, AdapterSpec, factors, merge
from codec.mgcf.config import MGCFConfig
from codec.mgcf.corpus import CorpusAdapted, CorpusConfig, adapt_corpus, split
from codec.mgcf.weights import load_model_file, parse_model, save_adapted, save_model, serialize_adapted
from codec.tensorfile import st_bytes
from jobs import corpusjob
from jobs.cli import main
from tests.conftest import make_model

REPO = Path(__file__).resolve().parents[1]
SPEC = AdapterSpec(4, (2, 3, 3))


def _images(n: int, h: int = 40, w: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:h, 0:w]
    return [((x * (i + 2) + y * 3)[..., None] + rng.integers(0, 12, (h, w, 3))).astype(np.uint8) for i in range(n)]


def _adapters(cfg: MGCFConfig, seed: int = 0, spread: int = 3) -> AdapterSet:
    g = torch.Generator().manual_seed(seed)
    return AdapterSet(
        SPEC, {f.name: torch.randint(-spread, spread + 1, f.shape, generator=g) for f in factors(cfg, SPEC)}
    )


@pytest.fixture
def base(model_dir):
    """A plain tiny model, installed where models are found by hash."""
    return load_model_file(save_model(make_model(MGCFConfig.tiny(), seed=5), model_dir))


def test_an_adapted_model_file_is_its_base_with_the_adapters_merged_exactly(base, model_dir, tmp_path):
    corpus = _adapters(base.cfg)
    path = save_adapted(base, corpus, tmp_path)
    assert path.stat().st_size < 4096  # adapters and a header, not a copy of the model
    adapted = load_model_file(path)
    assert adapted.base == base.digest and adapted.cfg == base.cfg and adapted.digest != base.digest
    want = merge(base.cfg, {k: v.double() for k, v in base.group("exact").items()}, corpus)
    for name, t in adapted.group("exact").items():
        assert torch.equal(t.double(), want[name]), name
    assert any(not torch.equal(adapted.group("float")[k], v) for k, v in base.group("float").items())
    assert serialize_adapted(base, corpus) == path.read_bytes()  # the same adapters make the same file

    # It codes and decodes like any model; a file it wrote names it, and decodes without being told.
    px = _images(1)[0]
    blob = codec.encode(px, model=codec.load_model(str(path)), adapt=None, coder="learned")
    assert codec.info(blob)["model_sha256"] == adapted.digest.hex()
    shutil.copy(path, model_dir / path.name)
    got = codec.decode(blob).pixels
    assert got.dtype == px.dtype and got.shape == px.shape and np.array_equal(got, px)


def test_damaged_or_crafted_adapted_model_files_are_refused(base, tmp_path):
    good = serialize_adapted(base, _adapters(base.cfg))
    # Its base is not installed anywhere: named, not a crash.
    other = make_model(MGCFConfig.tiny(), seed=99)
    missing = load_model_file(save_model(other, tmp_path / "private"))
    with pytest.raises(ModelNotFoundError, match="adapts model"):
        parse_model(serialize_adapted(missing, _adapters(base.cfg)), source="orphan.safetensors")
    # Every byte of the adapter section flipped in turn gives a clean refusal or a valid model.
    header = int.from_bytes(good[:8], "little") + 8
    for i in range(header, len(good)):
        bad = bytearray(good)
        bad[i] ^= 0xFF
        with contextlib.suppress(CallicError):
            parse_model(bytes(bad), source="flipped.safetensors")

    def crafted(meta: dict, tensors: dict | None = None) -> bytes:
        section = torch.frombuffer(bytearray(b"\x01\x04\x02\x03\x03\x07\x00"), dtype=torch.uint8)
        full = {"format": "callic-mgcf-adapted", "format_version": "1", "base": base.digest.hex()} | meta
        return st_bytes(tensors or {"adapters": section}, full | {"config": meta.get("config", base.cfg.to_json())})

    cases = {
        "not a SHA-256": crafted({"base": "../../etc/passwd"}),
        "configuration": crafted({"config": MGCFConfig(width=32, depth=1, patch=8).to_json()}),
        "one uint8 tensor": crafted({}, {"adapters": torch.zeros(4, dtype=torch.int32)}),
        "ADPT section lists": crafted({}),
    }
    for expected, data in cases.items():
        with pytest.raises(CorruptFileError, match=expected):
            parse_model(data, source="crafted.safetensors")
    # An adapted model never adapts another (no chains to follow).
    chained_path = save_adapted(base, _adapters(base.cfg, seed=1), tmp_path / "chain")
    chained = load_model_file(chained_path)
    with pytest.raises(ValueError):
        serialize_adapted(chained, _adapters(base.cfg))


def test_corpus_fine_tuning_saves_bits_on_held_out_images_and_says_when_it_does_not_pay(base):
    assert split(2) == ([0], [1]) and split(6) == ([0, 1, 3, 4], [2, 5])
    with pytest.raises(ValueError):
        split(1)
    result = adapt_corpus(base.float_model(), _images(6), CorpusConfig(steps=20, spec=SPEC), calibration=1)
    assert result.steps == 20 and result.adapted_bits < result.base_bits
    assert result.saved_bits() > 0 and result.pays(100) and not result.pays(int(result.saved_bits() / 8) + 1)
    timed = adapt_corpus(base.float_model(), _images(3), CorpusConfig(steps=10_000, minutes=1e-4, spec=SPEC))
    assert timed.steps < 10_000
    made_up = CorpusAdapted(result.adapters, [2], [100.0], [90.0], [50.0], 1000.0, 1, 0.0)
    assert made_up.saved_bits() == pytest.approx(200.0) and made_up.pays(24) and not made_up.pays(25)
    # Where the job keeps a classical file below the learned one, bits are saved only below it.
    assert made_up.saved_bits([1.9]) == pytest.approx(100.0) and made_up.saved_bits([1.7]) == 0.0
    assert made_up.bpsp() == (2.0, 1.8)


def _write(root: Path, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, px in enumerate(images):
        Image.fromarray(px).save(root / f"img{i}.png")
        out[f"img{i}.png"] = px
    return out


def _check(out: Path, images: dict[str, np.ndarray]) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(images)
    for name, px in images.items():
        got = np.asarray(Image.open(out / name))
        assert got.dtype == px.dtype and got.shape == px.shape and np.array_equal(got, px)


def test_a_corpus_adapted_job_restores_on_another_machine_and_resumes_with_the_same_model(
    ray_cluster, base, model_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(corpusjob, "USER_MODELS", tmp_path / "user-models")
    images = _write(tmp_path / "src", _images(6))
    base_path = model_dir / f"mgcf-{base.digest.hex()[:16]}.safetensors"
    args = ["archive", str(tmp_path / "src"), str(tmp_path / "dst"), "--job-id", "c", "--codec", "callic"]
    args += ["--model", str(base_path), "--steps", "0", "--shard-size", "2", "--adapt-corpus", "--corpus-steps", "20"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "corpus adaptation on 6 images, 20 steps" in printed and "kept: model" in printed
    job = tmp_path / "dst" / "c"
    spec = json.loads((job / "job.json").read_text())
    corpus = spec["corpus"]
    assert corpus["kept"] and corpus["base_model"] == base.digest.hex()
    assert spec["models"] == {"model": corpus["model_hash"], "base_model": base.digest.hex()}
    for digest in spec["models"].values():  # both are in the job folder, by hash
        assert (job / "models" / f"{digest}.safetensors").is_file()
    model_file = Path(spec["codec"]["model"])
    assert model_file.parent == tmp_path / "user-models" and model_file.stat().st_size == corpus["model_bytes"]
    rows = [json.loads(line) for line in subprocess_status(job)]
    assert rows[0]["corpus_model_bytes"] == corpus["model_bytes"]
    assert rows[0]["lossless"]["bpsp_with_corpus_model"] > rows[0]["lossless"]["bpsp"]

    # Resume on a machine without the corpus model: it codes with the job's copy, the same model.
    for f in sorted((job / "manifest").iterdir())[:2]:
        f.unlink()
    model_file.unlink()
    assert main(["resume", str(job), "--quiet"]) == 0
    hashes = {r.get("model_hash") for r in _facts(job)}
    assert hashes == {corpus["model_hash"]}

    # Restore on "another machine": a fresh process whose model path holds none of the job's models.
    shutil.copytree(job, tmp_path / "elsewhere" / "c")
    home, empty = tmp_path / "home", tmp_path / "no-models"
    home.mkdir()
    empty.mkdir()
    env = {**os.environ, "HOME": str(home), "CALLIC_MODEL_PATH": str(empty), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "jobs.cli", "restore", str(tmp_path / "elsewhere" / "c"), str(tmp_path / "out")]
    done = subprocess.run([*cmd, "--quiet"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _check(tmp_path / "out", images)


def subprocess_status(job: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "status", str(job), "--json"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.dumps(json.loads(done.stdout))]


def _facts(job: Path) -> list[dict]:
    from pipeline import manifest
    from pipeline.storage import Store

    return [manifest.facts(r) for r in manifest.read_all(Store(str(job))).to_pylist() if r["status"] == "ok"]


def test_a_corpus_model_that_does_not_pay_is_dropped_and_the_job_codes_with_the_base(
    ray_cluster, base, model_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(corpusjob, "USER_MODELS", tmp_path / "user-models")
    # The same images and steps as the kept job above, but with ``auto``: JPEG-XL codes them in far
    # fewer bits than this random model, adapted or not, so what the adapters save is never stored.
    images = _write(tmp_path / "src", _images(6))
    base_path = model_dir / f"mgcf-{base.digest.hex()[:16]}.safetensors"
    args = ["archive", str(tmp_path / "src"), str(tmp_path / "dst"), "--job-id", "d", "--codec", "auto"]
    assert main([*args, "--model", str(base_path), "--steps", "0", "--adapt-corpus", "--corpus-steps", "20"]) == 0
    assert "dropped, the job codes with the base model" in capsys.readouterr().out
    spec = json.loads((tmp_path / "dst" / "d" / "job.json").read_text())
    corpus = spec["corpus"]
    assert not corpus["kept"] and spec["models"] == {"model": base.digest.hex()}
    before, after = corpus["estimated_held_out_bpsp"]
    assert after < before and max(corpus["held_out_classical_bpsp"]) < after and corpus["estimated_saved_bits"] == 0
    assert not (tmp_path / "user-models").exists()
    assert main(["restore", str(tmp_path / "dst" / "d"), str(tmp_path / "out"), "--quiet"]) == 0
    _check(tmp_path / "out", images)
    # And a codec that is not the learned one is told so.
    other = ["archive", str(tmp_path / "src"), str(tmp_path / "dst"), "--job-id", "e", "--codec", "cca"]
    assert main([*other, "--adapt-corpus", "--quiet"]) == 64  # usage
