"""One codec interface (``codec.registry``): a third codec is one module and a registry line.

``tests.toycodec`` (raw pixels through zlib) is registered nowhere in the package; these tests
show it coding, decoding, archiving, restoring and benching through the same paths as callic's
codecs, with Ray workers learning of it from ``$CALLIC_CODECS`` alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import codec
from codec import registry
from codec.container import Container
from codec.errors import UnsupportedError
from codec.header import HEAD, Header
from codec.raster import Raster, raster_hash
from codec.settings import Settings
from jobs.cli import main
from pipeline import manifest
from pipeline.storage import Store
from tests import toycodec

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(7)


def _images() -> dict[str, np.ndarray]:
    return {
        "rgb.png": RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8),
        "deep/gray16.png": RNG.integers(0, 65536, (9, 13), dtype=np.uint16),
    }


def test_a_registered_codec_codes_and_decodes_through_codec_decode():
    encoder = registry.codec(toycodec.NAME).open(toycodec.ToySettings(level=9), "cpu")
    images = [Raster.from_array(px) for px in _images().values()]
    for raster, (blob, report) in zip(images, encoder.encode_many(images, verify=True), strict=True):
        assert report.coder == toycodec.NAME and report.bytes == len(blob)
        assert codec.info(blob)["coder"] == toycodec.NAME and codec.info(blob)["model_sha256"] is None
        back = codec.decode(blob)  # the package's decode, dispatching on the HEAD's coder id
        assert back.pixels.dtype == raster.pixels.dtype and back.pixels.shape == raster.pixels.shape
        assert np.array_equal(back.pixels, raster.pixels)


def test_a_file_naming_an_unknown_coder_is_refused_before_decoding():
    raster = Raster.from_array(np.zeros((4, 4, 3), dtype=np.uint8))
    header = Header(251, 4, 4, 3, "uint8", "RGB", raster_hash(raster), bytes(32), 0, 0)
    c = Container()
    c.add(HEAD, header.to_bytes())
    c.add(b"DATA", b"\x00")
    with pytest.raises(UnsupportedError, match="unknown coder id 251"):
        codec.decode(c.to_bytes())


def test_a_decoder_that_returns_the_wrong_shape_fails_loudly(monkeypatch):
    [(blob, _)] = (
        registry.codec(toycodec.NAME)
        .open(toycodec.ToySettings(), "cpu")
        .encode_many([Raster.from_array(np.zeros((4, 5, 3), dtype=np.uint8))], verify=False)
    )
    monkeypatch.setattr(toycodec, "decode_pixels", lambda *a: np.zeros((5, 4, 3), dtype=np.uint8))
    with pytest.raises(codec.CorruptFileError, match="decoder gave"):
        codec.decode(blob)


def test_ids_and_names_are_never_taken_twice():
    with pytest.raises(ValueError, match="clashes"):
        registry.register_coder(registry.Coder(1, "other", (), "x:y"))
    with pytest.raises(ValueError, match="registered already"):
        registry.register_codec(registry.CodecEntry("auto", "x:y"))
    assert registry.coder_named("callic") is registry.coder_named("mgcf")


def test_settings_refuse_fields_they_do_not_know():
    assert toycodec.ToySettings.from_dict({"level": 3}) == toycodec.ToySettings(level=3)
    assert toycodec.ToySettings.from_dict({}) == toycodec.ToySettings()  # an older spec: defaults
    with pytest.raises(UnsupportedError, match="unknown field lvl"):
        toycodec.ToySettings.from_dict({"lvl": 3}, "toy-zlib settings")
    assert issubclass(toycodec.ToySettings, Settings)


@pytest.fixture(scope="module")
def toy_ray():
    """A local Ray cluster whose workers import the toy codec (and can import ``tests``)."""
    import ray

    before = os.environ.get("CALLIC_CODECS")
    os.environ["CALLIC_CODECS"] = "tests.toycodec"
    ray.shutdown()
    env = {"CALLIC_CODECS": "tests.toycodec", "PYTHONPATH": str(ROOT)}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", runtime_env={"env_vars": env})
    yield
    ray.shutdown()
    if before is None:
        os.environ.pop("CALLIC_CODECS", None)
    else:
        os.environ["CALLIC_CODECS"] = before


def test_encoders_of_one_model_share_one_load(tiny_model_path, monkeypatch):
    """The bench opens one encoder per variant (T, order, calibration): the model loads once."""
    from codec import api

    loads = []
    real = api.load_model
    monkeypatch.setattr(api, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    callic = registry.codec("callic")
    pick = callic.settings_type.pick
    first = callic.open(pick({"model": str(tiny_model_path), "steps": 0}), "cpu")
    second = callic.open(pick({"model": str(tiny_model_path), "steps": 10, "calibration": 0}), "cpu")
    assert first.model is second.model and len(loads) == 1
    img = np.random.default_rng(3).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    for encoder in (first, second):
        [(data, _)] = encoder.encode_many([Raster.from_array(img)], verify=False)
        back = codec.decode(data).pixels
        assert back.dtype == img.dtype and back.shape == img.shape and np.array_equal(back, img)


def test_the_toy_codec_archives_restores_and_benches_through_the_pipeline(toy_ray, tmp_path, tiny_model_path, capsys):
    src, dst, out = tmp_path / "src", tmp_path / "dst", tmp_path / "out"
    images = _images()
    for key, pixels in images.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(src / key)
    dst.mkdir()
    args = ["archive", str(src), str(dst), "--job-id", "toy", "--codec", toycodec.NAME, "--workers", "1", "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["status", str(dst / "toy"), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["ok"], st["failed"], st["codecs"]) == (2, 0, {toycodec.NAME: 2})
    rows = manifest.load(Store(dst / "toy")).to_pylist()  # its own fact, with no pipeline change
    assert [manifest.facts(r) for r in rows] == [{"zlib_level": "6"}] * 2

    restore = ["restore", str(dst), str(out), "--model", str(tiny_model_path), "--workers", "1", "--quiet"]
    assert main(restore) == 0
    for key, pixels in images.items():
        back = np.asarray(Image.open(out / "toy" / key))
        assert back.dtype == pixels.dtype and back.shape == pixels.shape and np.array_equal(back, pixels)

    bench = ["bench", str(src), "--codecs", f"{toycodec.NAME},png", "--threads", "1"]
    assert main([*bench, "--out", str(tmp_path / "bench"), "-q"]) == 0
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "bench" / "results.parquet").to_pylist()
    toy = {r["image"]: r for r in rows if r["codec"] == toycodec.NAME}
    assert toy["rgb.png"]["verified"] and toy["rgb.png"]["bpsp"] > 0
    assert not toy["deep/gray16.png"]["verified"]  # the lossless bench takes 8-bit RGB only, as for every codec
