"""The CCA lossy model in float: its shape (the paper's size, uneven slices) and its loss."""

from __future__ import annotations

import pytest
import torch

from codec.cca.config import CCAConfig, power_slices
from codec.cca.loss import CCATrainee, aux_bits, rd_loss
from codec.cca.model import CCAModel, parameter_count


def test_power_schedule_gives_the_papers_slices():
    assert power_slices(320, 5, 1.7) == (8, 28, 56, 92, 136)
    assert power_slices(320, 5, 0) == (64,) * 5
    with pytest.raises(ValueError):
        power_slices(20, 5, 1.7)  # the first slice would be empty


def test_paper_configuration_has_the_papers_parameter_count():
    # The paper reports 64.9M parameters for the model that is shipped (no auxiliary model).
    n = parameter_count(CCAModel(CCAConfig.paper()))
    assert 64.0e6 < n < 66.0e6, n


def test_config_round_trips_through_json():
    cfg = CCAConfig.small()
    assert CCAConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError):
        CCAConfig.from_json('{"widths": [1, 2, 3, 4], "colour": 1}')


def test_shapes_and_slice_contexts():
    cfg = CCAConfig.tiny()
    torch.manual_seed(0)
    trainee = CCATrainee(cfg)
    x = torch.rand(2, 3, 64, 128)
    f = trainee.model(x)
    assert f.x_hat.shape == x.shape
    assert f.y.shape == (2, cfg.latent, 4, 8)
    assert [t.shape[1] for t in f.y_hat] == list(cfg.slice_sizes)
    assert f.y_bits.shape == f.z_bits.shape == (2,)
    # The main model sees every earlier slice, the auxiliary one all but the slice just before.
    assert [trainee.model.slices.visible(i) for i in range(5)] == [0, 1, 2, 3, 4]
    assert [trainee.aux.visible(i) for i in range(5)] == [0, 0, 1, 2, 3]


def test_eval_mode_measures_rates_at_the_rounded_values():
    torch.manual_seed(0)
    model = CCAModel(CCAConfig.tiny()).eval()
    x = torch.rand(1, 3, 64, 64)
    a, b = model(x), model(x)
    assert torch.equal(a.y_bits, b.y_bits) and torch.equal(a.z_bits, b.z_bits)  # no noise
    model.train()
    assert not torch.equal(model(x).y_bits, model(x).y_bits)  # training rates use noise


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def test_two_player_loss_trains_the_auxiliary_model_only_on_its_own_bits():
    torch.manual_seed(0)
    trainee = CCATrainee(CCAConfig.tiny())
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(1)
    rd_loss(trainee, x, 1.0, "two-player").loss.backward()
    got = _grads(trainee.aux)
    trainee.zero_grad()
    torch.manual_seed(1)  # the same noise
    f = trainee.model(x)
    (aux_bits(trainee.aux, f, detach=True).sum() / (2 * 64 * 64)).backward()
    want = _grads(trainee.aux)
    assert any(g.abs().sum() > 0 for g in want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_literal_loss_pushes_the_auxiliary_model_toward_more_bits():
    torch.manual_seed(0)
    trainee = CCATrainee(CCAConfig.tiny())
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(1)
    rd_loss(trainee, x, 1.0, "literal").loss.backward()
    got = _grads(trainee.aux)
    trainee.zero_grad()
    torch.manual_seed(1)
    f = trainee.model(x)
    (-aux_bits(trainee.aux, f).sum() / (2 * 64 * 64)).backward()
    for g, w in zip(got, _grads(trainee.aux), strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("mode", ["two-player", "literal", "off"])
def test_a_short_training_run_lowers_the_loss(mode):
    torch.manual_seed(0)
    trainee = CCATrainee(CCAConfig.tiny())
    opt = torch.optim.Adam(trainee.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(2)
    base = torch.rand(1, 3, 64, 64, generator=gen)
    images = (base + 0.1 * torch.rand(4, 3, 64, 64, generator=gen)).clamp(0, 1)  # correlated, learnable
    losses = []
    for _ in range(30):
        terms = rd_loss(trainee, images, 1.0, mode)
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
        losses.append(terms.loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
