"""Model files are checked before a decoder trusts them: a regular file of bounded size, the
tensors its configuration implies (no more, no fewer, the right shapes), its exactness bounds;
the search path skips a decoy of the right name but another hash."""

from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import codec
from codec.errors import CorruptFileError, ModelNotFoundError
from codec.mgcf.config import MGCFConfig
from codec.mgcf.weights import exact_model_by_hash, file_name, find_model, load_model_file, serialize
from jobs.cli import main
from tests.conftest import SAMPLES, assert_same_pixels, make_model


def _metadata(data: bytes) -> dict:
    return json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]


def _edited(tmp_path, edit_tensors=None, **metadata) -> str:
    """A tiny model file with its tensors edited and metadata replaced; returns its path."""
    data = serialize(make_model(MGCFConfig.tiny(), seed=3))
    tensors = st_load(data)
    if edit_tensors is not None:
        edit_tensors(tensors)
    path = tmp_path / "edited.safetensors"
    path.write_bytes(st_save(tensors, {**_metadata(data), **metadata}))
    return str(path)


def _drop(name):
    return lambda t: t.pop(name)


def _scale(name, factor):
    return lambda t: t.update({name: (t[name].long() * factor).contiguous()})


@pytest.mark.parametrize(
    "edit",
    [
        _drop("exact.head.bias"),  # missing
        _drop("float.embed.weight"),
        _drop("lut.sigmoid"),
        lambda t: t.update({"exact.extra": torch.zeros(3, dtype=torch.int32)}),  # extra
        lambda t: t.update({"exact.head.weight": t["exact.head.weight"][:, :-1].contiguous()}),  # misshaped
        lambda t: t.update({"float.head.weight": t["float.head.weight"].double()}),  # wrong type
        lambda t: t.update({"float.head.bias": torch.full_like(t["float.head.bias"], float("nan"))}),
        _scale("exact.blocks.0.fc1.weight", 2**40),  # the exact path could round: 2**53 bound
        _scale("lut.sigmoid", 2**10),
    ],
)
def test_tensors_that_do_not_fit_the_configuration_are_corrupt(tmp_path, edit):
    path = _edited(tmp_path, edit)
    with pytest.raises(CorruptFileError, match="edited.safetensors"):
        load_model_file(path)


@pytest.mark.parametrize(
    "metadata",
    [
        {"config": "{not json"},
        {"config": '{"width": 16.5, "depth": 1, "kernel": 5, "mlp_ratio": 2, "mixtures": 2, "patch": 8}'},
        {"config": '{"width": 16, "depth": 1000000000, "kernel": 5, "mlp_ratio": 2, "mixtures": 2, "patch": 8}'},
        {"config": '{"width": 16, "depth": 2, "kernel": 5, "mlp_ratio": 2, "mixtures": 2, "patch": 8}'},
        {"config": "[]"},
        {"format": "something else"},
    ],
)
def test_bad_configuration_is_corrupt(tmp_path, metadata):
    path = _edited(tmp_path, **metadata)
    start = time.perf_counter()
    with pytest.raises(CorruptFileError, match="edited.safetensors"):
        load_model_file(path)
    assert time.perf_counter() - start < 5


def test_dev_zero_and_missing_models_fail_cleanly(tmp_path, capsys):
    start = time.perf_counter()
    with pytest.raises(CorruptFileError, match="regular file"):
        codec.load_model("/dev/zero")
    assert time.perf_counter() - start < 2
    with pytest.raises(ModelNotFoundError, match="/missing"):
        codec.load_model("/missing/model.safetensors")
    gray = tmp_path / "g.cllc"
    assert main(["encode", str(SAMPLES / "camera-crop.png"), str(gray)]) == 0
    assert main(["decode", str(gray), str(tmp_path / "g.png"), "--model", "/dev/zero"]) == 3
    assert main(["decode", str(gray), str(tmp_path / "g.png"), "--model", "/missing/model.safetensors"]) == 5
    assert "/missing/model.safetensors" in capsys.readouterr().err


def test_restore_with_a_missing_model_is_a_clean_error(tmp_path, capsys):
    code = main(["restore", str(tmp_path / "archive"), str(tmp_path / "out"), "--model", "/missing/m.safetensors"])
    assert code == 5
    assert "/missing/m.safetensors" in capsys.readouterr().err


def test_a_decoy_with_the_right_name_is_skipped(tmp_path, monkeypatch, caplog):
    model = make_model(MGCFConfig.tiny(), seed=31)
    data = serialize(model)
    digest = hashlib.sha256(data).digest()
    decoy_dir, real_dir = tmp_path / "decoy", tmp_path / "real"
    decoy_dir.mkdir(), real_dir.mkdir()
    (decoy_dir / file_name(digest)).write_bytes(serialize(make_model(MGCFConfig.tiny(), seed=32)))
    (real_dir / file_name(digest)).write_bytes(data)
    monkeypatch.setenv("CALLIC_MODEL_PATH", f"{decoy_dir}:{real_dir}")
    img = np.ascontiguousarray(np.asarray(Image.open(SAMPLES / "coffee-crop.png").convert("RGB"))[:9, :11])
    blob = codec.encode(img, model=codec.load_model(str(real_dir / file_name(digest))), coder="learned")
    exact_model_by_hash.cache_clear()
    with caplog.at_level(logging.WARNING, logger="codec.mgcf.weights"):
        assert find_model(digest) == real_dir / file_name(digest)
        assert_same_pixels(codec.decode(blob).pixels, img)
    assert str(decoy_dir) in caplog.text
    monkeypatch.setenv("CALLIC_MODEL_PATH", str(decoy_dir))
    exact_model_by_hash.cache_clear()
    with pytest.raises(ModelNotFoundError, match="skipped .*decoy"):
        codec.decode(blob)
    exact_model_by_hash.cache_clear()


def test_lossy_model_files_are_checked(tiny_lossy_model_path, tmp_path):
    from codec.cca.weights import load_model_file as load_lossy

    data = tiny_lossy_model_path.read_bytes()
    tensors, meta = st_load(data), _metadata(data)
    for name, edit, metadata in [
        ("config", None, {"config": "{not json"}),
        ("lmbda", None, {"lmbda": "x"}),
        ("table", _drop("ztab.lows"), {}),
        ("lengths", lambda t: t.update({"ytab.lengths": t["ytab.lengths"] * 1000}), {}),
        ("float", _drop(next(k for k in tensors if k.startswith("float."))), {}),
    ]:
        edited = dict(tensors)
        if edit is not None:
            edit(edited)
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(st_save(edited, {**meta, **metadata}))
        with pytest.raises(CorruptFileError, match=name):
            load_lossy(path).float_model()
    with pytest.raises(ModelNotFoundError):
        load_lossy(tmp_path / "missing.safetensors")


def test_lossy_weights_outside_the_exact_bounds_are_a_damaged_file(tiny_lossy_model_path, tmp_path):
    """The integer decoder of a lossy model is derived on first use: weights whose products could
    leave the exact range must then be a CorruptFileError naming the file, not a bare ValueError."""
    from codec.cca.api import load_lossy_model

    data = tiny_lossy_model_path.read_bytes()
    tensors, meta = st_load(data), _metadata(data)
    # A decoder-side layer (the integer decoder holds only those), chosen by name: safetensors
    # returns its tensors in no fixed order, and an encoder-side pick made this test flaky.
    name = min(k for k in tensors if k.startswith("float.g_s.") and k.endswith("weight") and tensors[k].ndim == 4)
    tensors[name] = torch.full_like(tensors[name], 60000.0)  # finite in float16, far past 2**53 products
    path = tmp_path / "big.safetensors"
    path.write_bytes(st_save(tensors, meta))
    model = load_lossy_model(str(path), None, "cpu")
    with pytest.raises(CorruptFileError, match="big.safetensors.*bounds"):
        model.exact  # noqa: B018
