"""Backward-adaptive calibration (``codec.mgcf.calibration``, scheme 1): bit-exact round trips, the
encoder's tables equal the decoder's, files that lie about their calibration are refused, and the
integer statistics cannot overflow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import codec
import codec.mgcf.learned
from codec.container import Container, parse
from codec.defaults import CALIBRATION_SCHEMES, MAX_PATCHES_PER_STREAM
from codec.errors import CallicError, CorruptFileError, UnsupportedError
from codec.header import CALIBRATION_SECTION, KNOWN_CALIBRATION_SCHEMES, KNOWN_CRITICAL
from codec.mgcf import calibration
from codec.mgcf.calibration import (
    BETA_FRAC,
    BETA_LIMIT,
    NUM_FEATURES,
    RIDGE,
    Y_LIMIT,
    solve_ridge,
)
from tests.conftest import assert_same_pixels


def test_the_torch_free_mirrors_agree():
    assert CALIBRATION_SECTION == calibration.SECTION
    assert KNOWN_CALIBRATION_SCHEMES == (calibration.SCHEME,)
    assert (0, *KNOWN_CALIBRATION_SCHEMES) == CALIBRATION_SCHEMES


def _photo(samples, rows: int, cols: int) -> np.ndarray:
    return np.ascontiguousarray(samples["kodim23-crop"][:rows, :cols])


@pytest.mark.parametrize("per_stream", [1, 64])
def test_calibrated_files_round_trip(tiny_model, samples, per_stream):
    """Several segments (each its own statistics) and partial patches at the borders."""
    px = _photo(samples, 21, 30)
    data = codec.encode(px, model=tiny_model, coder="learned", adapt=None, patches_per_stream=per_stream)
    assert codec.info(data)["calibration"] == 1
    assert_same_pixels(codec.decode(data, model=tiny_model).pixels, px)


@pytest.mark.parametrize("kind", ["flat", "noise", "ramp"])
def test_extreme_images_round_trip(tiny_model, kind):
    """A constant colour (every residual 0), uniform noise (residuals at their clamps) and a ramp."""
    rng = np.random.default_rng(3)
    if kind == "flat":
        px = np.full((20, 19, 3), 37, dtype=np.uint8)
    elif kind == "noise":
        px = rng.integers(0, 256, (20, 19, 3), dtype=np.uint8)
    else:
        px = np.broadcast_to((np.arange(19) * 13 % 256).astype(np.uint8)[None, :, None], (20, 19, 3)).copy()
    data = codec.encode(px, model=tiny_model, coder="learned", adapt=None, calibration=1)
    assert_same_pixels(codec.decode(data, model=tiny_model).pixels, px)


def test_the_encoder_builds_the_decoders_tables(tiny_model, samples, monkeypatch):
    """The encoder's one parallel pass feeds the same calibrated tables as the step-wise decoder."""
    px = _photo(samples, 17, 23)
    seen: list[list[torch.Tensor]] = [[], []]
    side = [0]
    real = codec.mgcf.learned.frequency_tables

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        seen[side[0]].append(out.clone())
        return out

    monkeypatch.setattr(codec.mgcf.learned, "frequency_tables", recording)
    data = codec.encode(px, model=tiny_model, coder="learned", adapt=None, patches_per_stream=2, calibration=1)
    side[0] = 1
    assert_same_pixels(codec.decode(data, model=tiny_model).pixels, px)
    assert len(seen[0]) == len(seen[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(*seen, strict=True))


def test_calibration_changes_the_tables(tiny_model, samples, monkeypatch):
    px = _photo(samples, 17, 23)
    runs: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    real = codec.mgcf.learned.frequency_tables
    for scheme in (0, 1):

        def recording(*args, scheme=scheme, **kwargs):
            out = real(*args, **kwargs)
            runs[scheme].append(out.clone())
            return out

        monkeypatch.setattr(codec.mgcf.learned, "frequency_tables", recording)
        codec.encode(px, model=tiny_model, coder="learned", adapt=None, calibration=scheme)
    assert len(runs[0]) == len(runs[1])
    # The first step has no statistics yet (same tables); later steps are corrected.
    assert torch.equal(runs[0][0], runs[1][0])
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))


def test_calibration_saves_bits_with_the_shipped_model(samples):
    """The point of it, on a real photo crop with the real model (real file sizes)."""
    px = _photo(samples, 48, 64)
    model = codec.load_model()
    sizes = {s: len(codec.encode(px, model=model, coder="learned", adapt=None, calibration=s)) for s in (0, 1)}
    assert sizes[1] < sizes[0] * 0.99, sizes


def _with_sections(data: bytes, change) -> bytes:
    c = parse(data, KNOWN_CRITICAL)
    out = Container()
    for tag, payload in change(list(c.sections)):
        out.add(tag, payload)
    return out.to_bytes()


def _replace(tag: bytes, payload: bytes | None):
    def change(sections):
        out = [(t, payload if t == tag else p) for t, p in sections if not (t == tag and payload is None)]
        return out

    return change


def _insert_before_data(payload: bytes):
    def change(sections):
        i = [t for t, _ in sections].index(b"DATA")
        return [*sections[:i], (CALIBRATION_SECTION, payload), *sections[i:]]

    return change


@pytest.fixture(scope="module")
def calibrated(tiny_model, samples) -> tuple[bytes, bytes]:
    px = _photo(samples, 20, 24)
    cal = codec.encode(px, model=tiny_model, coder="learned", adapt=None, calibration=1)
    plain = codec.encode(px, model=tiny_model, coder="learned", adapt=None, calibration=0)
    return cal, plain


@pytest.mark.parametrize(
    ("payload", "error", "message"),
    [
        (b"\x00", CorruptFileError, "not one calibration scheme byte"),
        (b"\x01\x01", CorruptFileError, "not one calibration scheme byte"),
        (b"", CorruptFileError, "not one calibration scheme byte"),
        (b"\x07", UnsupportedError, "scheme 7 is not known"),
    ],
)
def test_a_bad_calibration_section_is_refused_before_decoding(calibrated, tiny_model, payload, error, message):
    bad = _with_sections(calibrated[0], _replace(CALIBRATION_SECTION, payload))
    with pytest.raises(error, match=message):
        codec.info(bad)
    with pytest.raises(error, match=message):
        codec.decode(bad, model=tiny_model)


def test_a_file_that_lies_about_its_calibration_fails_loudly(calibrated, tiny_model):
    """Dropping the section from a calibrated file, or adding one to a plain file, gives the
    decoder the wrong tables: it must raise, never return pixels."""
    cal, plain = calibrated
    for bad in (
        _with_sections(cal, _replace(CALIBRATION_SECTION, None)),
        _with_sections(plain, _insert_before_data(b"\x01")),
    ):
        with pytest.raises(CallicError):
            codec.decode(bad, model=tiny_model)


def test_a_calibration_section_in_a_classical_file_is_corrupt(samples):
    data = codec.encode(samples["camera-crop"], coder="classical")
    bad = _with_sections(data, _insert_before_data(b"\x01"))
    with pytest.raises(CorruptFileError, match="only the learned coder calibrates"):
        codec.decode(bad)


def test_calibrated_rgba_and_adapted_files_round_trip(tiny_model, samples):
    px = _photo(samples, 24, 24)
    rgba = np.dstack([px, (np.arange(24 * 24, dtype=np.uint8) % 251).reshape(24, 24)])
    data = codec.encode(rgba, model=tiny_model, coder="learned", adapt=None)
    assert codec.info(data)["calibration"] == 1
    assert_same_pixels(codec.decode(data, model=tiny_model).pixels, rgba)
    from codec.mgcf.rpft import AdaptConfig

    data = codec.encode(px, model=tiny_model, coder="learned", adapt=AdaptConfig(steps=2, min_pixels=0))
    info = codec.info(data)
    assert info["calibration"] == 1
    assert_same_pixels(codec.decode(data, model=tiny_model).pixels, px)


# ---- the integer solver and the bounds ----


def _float_solution(gram, cross):
    a = gram.double() + RIDGE * torch.eye(gram.shape[-1], dtype=torch.float64)
    return torch.linalg.solve(a, cross.double().unsqueeze(-1)).squeeze(-1)


def test_the_integer_ridge_solver_matches_a_float_solve():
    rng = torch.Generator().manual_seed(5)
    n, rows = NUM_FEATURES, 5000
    f = torch.randint(-Y_LIMIT // 8, Y_LIMIT // 8, (4, rows, n), generator=rng)
    true_beta = torch.randn(4, n, generator=rng, dtype=torch.float64) * 0.3
    noise = torch.randn(4, rows, generator=rng, dtype=torch.float64) * 300
    y = ((f.double() @ true_beta.unsqueeze(-1)).squeeze(-1) + noise).round().long()
    gram, cross = f.transpose(1, 2) @ f, (f.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1)
    energy = (y * y).sum(1)
    beta = solve_ridge(gram, cross, energy).double() / (1 << BETA_FRAC)
    assert torch.allclose(beta, _float_solution(gram, cross), atol=2e-3)
    assert torch.allclose(beta, true_beta.double(), atol=0.02)


def test_the_solver_cannot_overflow_at_the_largest_statistics():
    """Statistics at the bounds the module doc gives for the largest segment a header can
    describe (4096 patches of 256 x 256: 2**28 subpixels of one channel, |y| <= 2**13)."""
    most = (MAX_PATCHES_PER_STREAM * 256 * 256) * Y_LIMIT * Y_LIMIT
    assert most < 2**55
    n = NUM_FEATURES
    worst = torch.full((3, n, n), most, dtype=torch.int64)  # every feature the same, at its clamp
    cross = torch.stack([torch.full((n,), most), torch.full((n,), -most), torch.zeros(n, dtype=torch.int64)])
    beta = solve_ridge(worst, cross, torch.full((3,), most))
    assert beta.abs().max() <= BETA_LIMIT
    # A constant image: no residual anywhere, so no correction.
    zero = solve_ridge(
        torch.zeros(1, n, n, dtype=torch.int64), torch.zeros(1, n, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
    )
    assert not zero.any()
    # Random Gram matrices at the top of the range stay finite and clamped.
    g = torch.randint(0, 2**16, (8, 200, n), generator=torch.Generator().manual_seed(1)).long()
    gram = (g.transpose(1, 2) @ g) << 14
    assert 2**52 < gram.max() < 2**55
    beta = solve_ridge(gram, gram[:, :, 0], gram[:, 0, 0])
    assert beta.abs().max() <= BETA_LIMIT
    assert torch.allclose(beta[:, 0].double() / (1 << BETA_FRAC), torch.ones(8, dtype=torch.float64), atol=0.01)


def test_the_statistics_stay_exact_on_the_largest_segment():
    """Per-step Gram sums are computed in float64: exact while below 2**53. One step of the
    largest segment holds at most 4096 patches x 128 positions (P = 256) of subpixels."""
    per_step = MAX_PATCHES_PER_STREAM * 128 * (Y_LIMIT * Y_LIMIT) * 2
    assert per_step < 2**53


def test_each_segment_decodes_alone_whatever_the_batching(tiny_model, samples):
    """Statistics are per segment: a decoder that batches segments otherwise than the encoder
    (one at a time, or three) gets the same pixels."""
    px = _photo(samples, 30, 35)  # 4 x 5 patches of 8: 20 patches, 7 segments of 3
    net = tiny_model.exact
    streams = codec.mgcf.learned.encode_rgb(px, net, 3, calibration=1)
    assert codec.mgcf.learned.encode_rgb(px, net, 3, max_patches=1, calibration=1) == streams
    for max_patches in (1, 3, 9, None):
        out = codec.mgcf.learned.decode_rgb(streams, 30, 35, net, 3, max_patches=max_patches, calibration=1)
        assert_same_pixels(out, px)


def test_the_written_out_constants_are_what_they_say():
    assert round(2 * math.log(2) * 256) == calibration.LOGISTIC_MAD
    want = tuple(round(calibration.LOGISTIC_MAD * 2 ** ((j - 4) / 2) * 65536) for j in range(1, 9))
    assert want == calibration.SURPRISE_STEPS
    assert len(calibration.SURPRISE_STEPS) == calibration.SURPRISE_BUCKETS - 2
    assert (round(4096 / math.e), round(4096 * math.e)) == (calibration.RATIO_MIN, calibration.RATIO_MAX)
