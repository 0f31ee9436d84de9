import pytest
import torch
import torch.nn.functional as F

from codec.fixedpoint import build_luts
from codec.mgcf.config import MGCFConfig
from codec.mgcf.exact import ExactMGCF
from codec.mgcf.mixture import LOG_SCALE_MAX, LOG_SCALE_MIN, nll_bits
from codec.mgcf.model import MGCF, _MaskedDepthwise, count_parameters, visible_rows
from codec.mgcf.quantize import exact_tensors
from codec.mgcf.wavefront import group_map, kernel_mask
from tests.conftest import make_model


def test_default_config_has_the_papers_575k_parameters():
    n = count_parameters(MGCF(MGCFConfig()))
    assert n == 574_514
    assert abs(n - 575_000) / 575_000 < 0.01


def _perturbation_changes(model_fn, cfg: MGCFConfig, seed: int) -> None:
    """Changing one pixel of group g must leave every prediction at groups <= g unchanged, and
    must change some later prediction (so the test can fail)."""
    gen = torch.Generator().manual_seed(seed)
    p = cfg.patch
    base = torch.randint(0, 256, (1, p, p, 3), generator=gen)
    groups = group_map(p)
    out0 = model_fn(base)
    changed_later = 0
    for i, j in [(0, 0), (p // 2, p // 2 - 1), (p - 1, 0), (1, p - 1), (p // 3, 2)]:
        x = base.clone()
        x[0, i, j] = (x[0, i, j] + 97) % 256
        out = model_fn(x)
        g = int(groups[i, j])
        same = groups <= g
        assert torch.equal(out[0][same], out0[0][same]), (i, j)
        changed_later += int(not torch.equal(out[0][~same], out0[0][~same]))
    assert changed_later > 0


@pytest.mark.parametrize("cfg", [MGCFConfig.tiny(), MGCFConfig(patch=16)], ids=["tiny", "default-p16"])
def test_float_model_is_causal(cfg):
    model = make_model(cfg, seed=1).double()
    with torch.no_grad():
        _perturbation_changes(lambda x: model(x.permute(0, 3, 1, 2)), cfg, seed=2)


@pytest.mark.parametrize("cfg", [MGCFConfig.tiny(), MGCFConfig(patch=16)], ids=["tiny", "default-p16"])
def test_exact_model_is_causal(cfg):
    exact = ExactMGCF(cfg, exact_tensors(make_model(cfg, seed=1)), build_luts(LOG_SCALE_MIN, LOG_SCALE_MAX))
    _perturbation_changes(exact.full_params, cfg, seed=3)


def test_nll_is_a_distribution():
    """Probabilities of all 256 values of a channel sum to 1 (R here: it has no coupling)."""
    cfg = MGCFConfig.tiny()
    params = torch.randn(1, cfg.head_channels, dtype=torch.float64)
    pixels = torch.zeros(256, 3, dtype=torch.float64)
    pixels[:, 0] = torch.arange(256)
    bits = nll_bits(params.expand(256, -1), pixels, cfg.mixtures)[:, 0]
    assert torch.isclose(torch.exp2(-bits).sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-4)


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("bands", [False, True], ids=["whole", "bands"])
def test_cropped_depthwise_is_the_masked_convolution(kernel, bands, monkeypatch):
    """The CPU depth-wise path (visible kernel rows only, its own backward) is F.conv2d of the masked
    kernel: torch's gradcheck (float64 finite differences), then output and gradients compared;
    also with the weight gradient cut into bands of 2 rows (7 rows: the last band has one)."""
    if bands:
        monkeypatch.setattr("codec.mgcf.model._BAND_POSITIONS", 10)  # 10 // width 5 = 2 rows per band
    mask = kernel_mask(kernel, strict=False).double()
    rows = visible_rows(kernel, strict=False)
    assert rows < kernel and mask[rows - 1].any() and not mask[rows:].any()
    gen = torch.Generator().manual_seed(kernel)
    x = torch.randn(2, 3, 7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(3, 1, kernel, kernel, generator=gen, dtype=torch.float64) * mask).requires_grad_()
    b = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: _MaskedDepthwise.apply(*a, rows), (x, w, b))
    grad = torch.randn(2, 3, 7, 5, generator=gen, dtype=torch.float64)
    results = []
    for y in (_MaskedDepthwise.apply(x, w, b, rows), F.conv2d(x, w, b, padding=kernel // 2, groups=3)):
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), grad)
        results.append((y.detach(), gx, gw * mask, gb))  # a masked tap's gradient never reaches the weight
    for ours, plain in zip(*results, strict=True):
        assert ours.shape == plain.shape and torch.allclose(ours, plain, rtol=1e-10, atol=1e-12)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def test_training_step_keeps_the_function(monkeypatch):
    """One training step with the cropped depth-wise path gives the plain masked F.conv2d's outputs,
    loss and every gradient (the code before it) up to float rounding (relative 1e-4): the paper's
    configuration, and with one batch-wide adapter delta on each depth-wise kernel (RPFT's path)."""
    cfg = MGCFConfig()
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (2, 16, 16, 3), generator=gen, dtype=torch.uint8).permute(0, 3, 1, 2)
    delta = 0.01 * torch.randn(1, cfg.width, 1, cfg.kernel, cfg.kernel, generator=gen)
    calls = []
    fast = _MaskedDepthwise.apply

    def plain_depthwise(x, kernel, bias, rows):
        return F.conv2d(x, kernel, bias, padding=kernel.shape[-1] // 2, groups=x.shape[1])

    def step(with_delta: bool):
        model = make_model(cfg, seed=4).train()
        deltas = {f"blocks.{i}.dw": delta.clone().requires_grad_() for i in range(cfg.depth)} if with_delta else None
        params = model(x, deltas)
        loss = nll_bits(params, x.permute(0, 2, 3, 1), cfg.mixtures).mean()
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        grads |= {n: d.grad for n, d in (deltas or {}).items()}
        return params.detach(), loss.detach(), grads

    for with_delta in (False, True):
        monkeypatch.setattr(_MaskedDepthwise, "apply", lambda *a: calls.append(1) or fast(*a))
        ours = step(with_delta)
        monkeypatch.setattr("codec.mgcf.model.masked_depthwise", plain_depthwise)
        plain = step(with_delta)
        monkeypatch.undo()
        assert _relative(ours[0], plain[0]) < 1e-4 and _relative(ours[1], plain[1]) < 1e-4
        assert ours[2].keys() == plain[2].keys()
        for name, g in plain[2].items():
            assert _relative(ours[2][name], g) < 1e-4, name
    assert len(calls) == 2 * cfg.depth  # the fast path did run, once per block and step
