import pytest
import torch

from codec.config import MGCFConfig
from codec.exact import ExactMGCF
from codec.fixedpoint import build_luts
from codec.mgcf import MGCF, count_parameters
from codec.mixture import LOG_SCALE_MAX, LOG_SCALE_MIN, nll_bits
from codec.quantize import exact_tensors
from codec.wavefront import group_map
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
