"""``codec.mgcf.calibration_loss``: the float stand-in of calibration that RPFT trains through. Its
corrections follow scheme 1's geometry, lower the estimated bits of a poorly calibrated model,
and pass gradients to the model's parameters, also through the corrections themselves."""

from __future__ import annotations

import numpy as np
import torch

from codec.mgcf import calibration, calibration_loss
from codec.mgcf.coder import with_adapters
from codec.mgcf.learned import patchify, real_masks
from codec.mgcf.mixture import nll_bits


def test_the_neighbours_are_the_coders():
    assert calibration_loss.NEIGHBOURS == calibration.NEIGHBOURS
    t = torch.arange(12.0).reshape(1, 3, 4, 1)
    west = calibration_loss._shifted(t, 0, -1)[0, ..., 0]
    assert west[1].tolist() == [0.0, 4.0, 5.0, 6.0]  # out[i, j] = t[i, j - 1], zero outside
    north_east = calibration_loss._shifted(t, -1, 1)[0, ..., 0]
    assert north_east[0].tolist() == [0.0] * 4 and north_east[2].tolist() == [5.0, 6.0, 7.0, 0.0]


def _inputs(tiny_model, samples):
    px = np.ascontiguousarray(samples["kodim23-crop"][:40, :44])
    p = tiny_model.exact.cfg.patch
    patches = patchify(px, p)
    real = real_masks(40, 44, p, range(patches.shape[0]))
    net = tiny_model.float_model("cpu")
    x = patches.permute(0, 3, 1, 2).float()
    return net, x, patches.float(), real


def test_corrections_lower_the_bits_and_keep_the_gradient(tiny_model, samples):
    net, x, pixels, real = _inputs(tiny_model, samples)
    k = net.cfg.mixtures
    group = torch.zeros(x.shape[0], dtype=torch.long)
    params = net(x).detach().requires_grad_(True)
    shift, log_change = calibration_loss.corrections(params, pixels, real, group, k)
    # The regression and the scale ratios are differentiable in the model's outputs.
    (g_shift,) = torch.autograd.grad(shift.sum(), params, retain_graph=True)
    (g_scale,) = torch.autograd.grad(log_change.sum(), params, retain_graph=True)
    assert g_shift.abs().sum() > 0 and g_scale.abs().sum() > 0
    assert shift.abs().max() <= calibration_loss.SHIFT_LIMIT
    assert log_change.abs().max() <= calibration_loss.LOG_RATIO_LIMIT
    fixed = calibration_loss.corrected(params, shift, log_change, k)
    before = (nll_bits(params, pixels, k).sum(-1) * real).sum()
    after = (nll_bits(fixed, pixels, k).sum(-1) * real).sum()
    assert after < 0.97 * before, (float(before), float(after))  # a random model is far from calibrated
    after.backward()
    assert params.grad is not None and params.grad.abs().sum() > 0
    # No correction at all leaves the parameters as they are.
    zero = torch.zeros_like(shift)
    assert torch.equal(calibration_loss.corrected(params, zero, zero, k), params)


def test_statistics_are_per_image(tiny_model, samples):
    """Two images in one pass get the corrections each would get alone."""
    net, x, pixels, real = _inputs(tiny_model, samples)
    k, n = net.cfg.mixtures, x.shape[0]
    other = torch.flip(pixels, [1, 2])  # another image: the same patches, turned around
    both_x = torch.cat([x, other.permute(0, 3, 1, 2)])
    both_pix, both_real = torch.cat([pixels, other]), torch.cat([real, torch.ones_like(real)])
    with torch.no_grad():
        params = net(both_x)
    group = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    shift, log_change = calibration_loss.corrections(params, both_pix, both_real, group, k)
    alone_shift, alone_change = calibration_loss.corrections(params[:n], pixels, real, group[:n], k)
    assert torch.allclose(shift[:n], alone_shift, atol=1e-4)
    assert torch.allclose(log_change[:n], alone_change, atol=1e-5)


def test_rpft_can_train_through_the_corrections(tiny_model, samples):
    """``rpft.adapt(calibration=1)``: its estimates are the corrected bits (lower than the plain
    ones for a random model), and its adapters still encode into a file that decodes exactly."""
    import codec
    from codec.mgcf import rpft
    from tests.conftest import assert_same_pixels

    px = np.ascontiguousarray(samples["kodim23-crop"][:40, :44])
    cfg = rpft.AdaptConfig(steps=2, lr=1e-2, min_pixels=0)
    net = tiny_model.float_model("cpu")
    [plain] = rpft.adapt(net, [px], cfg)
    [aware] = rpft.adapt(net, [px], cfg, calibration=1)
    assert aware.base_bits < plain.base_bits
    merged = with_adapters(tiny_model.exact, aware.adapters)
    streams = codec.mgcf.learned.encode_rgb(px, merged, 64, calibration=1)
    assert_same_pixels(codec.mgcf.learned.decode_rgb(streams, 40, 44, merged, 64, calibration=1), px)
