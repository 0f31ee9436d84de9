"""The lossy codec's files: exact decoding of the latents anywhere, the stored reconstruction
hash, the tails (escapes), and bad files refused."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import codec
from codec.cca import coding
from codec.cca.api import encode_lossy, load_lossy_model
from codec.cca.bitstream import decode_group, encode_group
from codec.cca.config import CCAConfig
from codec.cca.model import CCAModel
from codec.cca.tables import gaussian_tables
from codec.cca.weights import save_model
from codec.container import HEAD, Container, parse
from codec.entropy import Decoder, Encoder
from codec.errors import CorruptFileError, ModelNotFoundError, UnsupportedError, VerificationError


@pytest.fixture(scope="module")
def lossy(model_dir):
    torch.manual_seed(0)
    path = save_model(CCAModel(CCAConfig.tiny()).eval(), 1.0, model_dir)
    return load_lossy_model(path)


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 2, y * 3, (x + y) * 2], -1) + rng.integers(0, 20, (h, w, 3))
    return (base % 256).astype(np.uint8)


def test_round_trip_returns_the_reconstruction_the_file_names(lossy):
    img = photo(70, 100)
    data = encode_lossy(img, model=lossy, verify=True)
    out = codec.decode(data)
    assert out.pixels.shape == img.shape and out.pixels.dtype == np.uint8
    info = codec.info(data)
    assert info["coder"] == "cca" and info["lossy"] and info["model_sha256"] == lossy.digest.hex()
    # Decoding again, with a fresh model object, gives the very same pixels.
    assert np.array_equal(codec.decode(data, model=load_lossy_model_copy(lossy)).pixels, out.pixels)


def load_lossy_model_copy(model: coding.LossyModel) -> coding.LossyModel:
    return coding.LossyModel(model.file, torch.device("cpu"))


def test_the_exact_path_tracks_the_float_model(lossy):
    """The integer decoder is the float model with rounded weights: pixels within a level or two."""
    img = photo(64, 128, seed=3)
    _, recon = coding.encode(lossy, img)
    with torch.no_grad():
        f = lossy.float_model(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    float_pixels = (f.x_hat.clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
    diff = np.abs(float_pixels - recon)
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


@pytest.mark.parametrize("threads", [1, 2])
def test_latents_decode_exactly_whatever_the_thread_count(lossy, threads):
    img = photo(96, 80, seed=1)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        data, recon = coding.encode(load_lossy_model_copy(lossy), img)
        torch.set_num_threads(threads)
        out = coding.decode(load_lossy_model_copy(lossy), data, 96, 80)
    finally:
        torch.set_num_threads(old)
    assert out.dtype == recon.dtype and out.shape == recon.shape
    assert np.array_equal(out, recon)


def test_coded_size_matches_the_models_estimate(lossy):
    img = photo(128, 128, seed=2)
    data, _ = coding.encode(lossy, img)
    with torch.no_grad():
        f = lossy.float_model(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    estimated = (f.y_bits + f.z_bits).item() / 8
    assert abs(len(data) - estimated) < 0.1 * estimated + 16, (len(data), estimated)


def test_values_beyond_the_tables_are_escaped_and_come_back():
    tables = gaussian_tables()
    groups = [
        (torch.tensor([0, 1, -1, 2, -2, 3, 40, -700, 2**29]), tables[0], -1),  # the narrowest table
        (torch.randint(-400, 400, (300,)), tables[40], -((tables[40].numel() - 3) // 2)),
    ]
    enc = Encoder()
    for values, table, low in groups:
        encode_group(enc, values, table, low)
    dec = Decoder(enc.finish())
    for values, table, low in groups:
        assert torch.equal(decode_group(dec, values.numel(), table, low), values)


def _with_data(data: bytes, payload: bytes) -> bytes:
    """The same file with another DATA payload (and valid checksums)."""
    old = parse(data, frozenset({HEAD, b"DATA"}))
    out = Container()
    for tag, value in old.sections:
        out.add(tag, payload if tag == b"DATA" else value)
    return out.to_bytes()


def test_damaged_files_are_refused(lossy):
    data = encode_lossy(photo(64, 64), model=lossy)
    with pytest.raises(CorruptFileError):
        codec.decode(data[: len(data) - 9])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(CorruptFileError):
        codec.decode(bytes(flipped))  # section checksum
    payload = parse(data, frozenset({HEAD, b"DATA"})).require(b"DATA")
    for bad in (payload[:-4], bytes(b ^ 0x55 for b in payload)):
        with pytest.raises((CorruptFileError, VerificationError)):
            codec.decode(_with_data(data, bad))  # valid checksums, wrong latents


def test_unknown_model_and_unsupported_images(lossy, tmp_path, monkeypatch):
    data = encode_lossy(photo(64, 64), model=lossy)
    monkeypatch.setenv("CALLIC_MODEL_PATH", str(tmp_path))
    monkeypatch.setattr("codec.modelfiles.model_dirs", lambda: [tmp_path])
    from codec.cca.api import lossy_model_by_hash

    lossy_model_by_hash.cache_clear()
    with pytest.raises(ModelNotFoundError):
        codec.decode(data)
    with pytest.raises(UnsupportedError):
        encode_lossy(np.zeros((8, 8), np.uint8), model=lossy)


def test_shipped_rate_points_load_by_quality():
    from codec.cca.weights import file_name
    from codec.modelfiles import PACKAGE_MODELS, quality_levels

    levels = quality_levels()
    if not levels:
        pytest.skip("no lossy models shipped")
    lambdas = []
    for q, name in enumerate(levels, start=1):
        model = load_lossy_model(quality=q)
        assert file_name(model.digest) == name  # the file is what its name says
        lambdas.append(model.file.lmbda)
    assert lambdas == sorted(lambdas, reverse=True)  # quality 1 = the largest rate weight = fewest bits
    with pytest.raises(ValueError):
        load_lossy_model(quality=len(levels) + 1)
    # Superseded rate points stay installed, so that the files made with them still decode: a
    # decoder finds a model by the hash in the file's name.
    for path in PACKAGE_MODELS.glob("cca-*.safetensors"):
        assert file_name(hashlib.sha256(path.read_bytes()).digest()) == path.name
