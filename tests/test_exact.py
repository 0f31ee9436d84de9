"""The exact path: the decoder's step-wise tables equal the encoder's, and the tables are what
constriction codes with."""

import math

import constriction
import numpy as np
import pytest
import torch

from codec.entropy import Decoder, Encoder
from codec.fixedpoint import ACT_FRAC, build_luts, isqrt, layer_norm
from codec.mgcf.config import MGCFConfig
from codec.mgcf.exact import ExactMGCF
from codec.mgcf.mixture import LOG_SCALE_MAX, LOG_SCALE_MIN, log_prob
from codec.mgcf.quantize import exact_tensors
from codec.mgcf.tables import TABLE_TOTAL, frequency_tables
from codec.mgcf.wavefront import num_steps
from tests.conftest import make_model

LUTS = build_luts(LOG_SCALE_MIN, LOG_SCALE_MAX)


def _exact(cfg, seed=0):
    model = make_model(cfg, seed)
    return model, ExactMGCF(cfg, exact_tensors(model), LUTS)


@pytest.mark.parametrize("cfg,seed", [(MGCFConfig.tiny(), 0), (MGCFConfig.tiny(), 1), (MGCFConfig(patch=12), 2)])
def test_step_decoder_tables_equal_parallel_pass_tables(cfg, seed):
    _, exact = _exact(cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    p, k = cfg.patch, cfg.mixtures
    patches = torch.randint(0, 256, (3, p, p, 3), generator=gen)
    patches[1] = 128 + (patches[1] - 128) // 16  # a smooth patch beside two noisy ones
    full = exact.full_params(patches)
    state = exact.step_decoder(3)
    for step in range(num_steps(p, p)):
        params = state.params(step)
        rows, cols = state.positions(step)
        assert torch.equal(params, full[:, rows, cols])
        pix = patches[:, rows, cols].reshape(-1, 3)
        for c in range(3):
            a = frequency_tables(params.reshape(-1, params.shape[-1]), c, pix, k, exact.luts)
            b = frequency_tables(full[:, rows, cols].reshape(-1, params.shape[-1]), c, pix, k, exact.luts)
            assert torch.equal(a, b)
        state.set_pixels(step, patches[:, rows, cols])


def test_tables_are_valid_and_close_to_the_float_mixture():
    cfg = MGCFConfig.tiny()
    model, exact = _exact(cfg, 3)
    gen = torch.Generator().manual_seed(3)
    patches = torch.randint(0, 256, (4, cfg.patch, cfg.patch, 3), generator=gen)
    params_int = exact.full_params(patches).reshape(-1, cfg.head_channels)
    pix = patches.reshape(-1, 3)
    params_real = params_int / 2**ACT_FRAC
    for c in range(3):
        q = frequency_tables(params_int, c, pix, cfg.mixtures, exact.luts)
        assert q.shape == (pix.shape[0], 256) and q.dtype == torch.int64
        assert torch.all(q >= 0) and torch.all(q.sum(1) == TABLE_TOTAL)
        # Float probabilities of every value of channel c, given the true earlier channels.
        cand = pix[:, None, :].repeat(1, 256, 1).double()
        cand[:, :, c] = torch.arange(256, dtype=torch.float64)
        p_float = torch.exp(log_prob(params_real[:, None, :].expand(-1, 256, -1), cand, cfg.mixtures)[..., c])
        p_exact = (q + 1).double() / 2**24
        kl = (p_float * (torch.log(p_float.clamp_min(1e-30)) - torch.log(p_exact))).sum(1)
        assert float(kl.max()) < 0.01, float(kl.max())  # nats


def test_constriction_codes_exactly_the_table_frequencies():
    gen = torch.Generator().manual_seed(4)
    n = 5000
    raw = torch.randint(0, 1000, (n, 256), generator=gen) ** 2
    q = raw * TABLE_TOTAL // raw.sum(1, keepdim=True)
    q[:, 0] += TABLE_TOTAL - q.sum(1)
    symbols = torch.randint(0, 256, (n,), generator=gen)
    enc = Encoder()
    enc.encode(symbols, q)
    data = enc.finish()
    ideal = -torch.log2((q[torch.arange(n), symbols] + 1).double() / 2**24).sum().item()
    assert abs(8 * len(data) - ideal) < 64 + 1e-3 * ideal
    assert torch.equal(Decoder(data).decode(q), symbols)
    # and with a frequency off by one, the stream differs
    q2 = q.clone()
    q2[:, 0] -= 1
    q2[:, 1] += 1
    enc2 = Encoder()
    enc2.encode(symbols, q2)
    assert enc2.finish() != data


def test_constriction_quantizer_is_the_identity_on_our_tables():
    """Known-answer check on constriction itself: a single symbol of frequency 1 costs 24 bits."""
    q = np.zeros((1000, 256), np.float32)
    q[:, 0] = TABLE_TOTAL
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(np.full(1000, 7, np.int32), constriction.stream.model.Categorical(perfect=False), q)
    assert abs(enc.get_compressed().size * 32 - 24 * 1000) <= 64


def test_isqrt_and_layer_norm_are_exact():
    n = torch.cat([torch.arange(0, 10000), torch.randint(0, 2**62, (10000,)), torch.tensor([2**62 - 1])])
    s = isqrt(n)
    assert torch.all(s * s <= n) and torch.all((s + 1) * (s + 1) > n)
    x = torch.randint(-(2**22) + 1, 2**22, (64, 256)).double()
    y = layer_norm(x, torch.full((256,), 2.0**16), torch.zeros(256))
    real = torch.nn.functional.layer_norm(x / 4096, (256,)) * 4096
    assert torch.all((y - real).abs() < 4)
    assert torch.equal(y, torch.round(y))


def test_exact_outputs_track_the_float_model():
    cfg = MGCFConfig(patch=16)
    model, exact = _exact(cfg, 5)
    patches = torch.randint(0, 256, (2, 16, 16, 3), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model.double()(patches.permute(0, 3, 1, 2))
    got = exact.full_params(patches) / 2**ACT_FRAC
    assert float((got - ref).abs().max()) < 0.01
    assert math.isfinite(float(got.abs().max()))
