"""Rate-distortion loss with the Causal Context Adjustment term (cca.md, "The CCA loss").

    loss = 0.05 * 255**2 * MSE + lmbda * R + cca_weight * L_CCA   (+ the auxiliary model's own bits)

R is the estimated bits per pixel of y and z; L_CCA = (bits of y under the main slice model - bits
of y under the auxiliary slice model, which skips the slice just before) per pixel. Modes:

- ``two-player`` (default, the intended reading): the auxiliary model minimizes its own bits on
  detached inputs; the main model and the encoder minimize L_CCA with the auxiliary model's
  weights held fixed, so the gradient only reshapes y (and the main predictors).
- ``literal``: the authors' released code, where L_CCA's gradient also reaches the auxiliary
  model's weights (pushing it toward *worse* predictions) and it has no loss of its own.
- ``off``: plain rate-distortion, for the ablation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from codec.cca.config import CCAConfig
from codec.cca.model import CCAModel, Forward, SliceModel, gaussian_bits

MODES = ("two-player", "literal", "off")
MSE_WEIGHT = 0.05 * 255**2


class CCATrainee(nn.Module):
    """What training optimizes: the codec model and CCA's auxiliary slice model (never shipped).

    Its forward is the whole loss, so that data parallelism (DDP) sees every parameter used.
    """

    def __init__(self, cfg: CCAConfig):
        super().__init__()
        self.cfg = cfg
        self.model = CCAModel(cfg)
        self.aux = SliceModel(cfg, skip=1)

    def forward(self, x: torch.Tensor, lmbda: float, mode: str = "two-player", cca_weight: float = 1.0):
        if mode not in MODES:
            raise ValueError(f"CCA loss mode must be one of {MODES}")
        f = self.model(x)
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        mse = (f.x_hat - x).pow(2).mean()
        y_bpp = f.y_bits.sum() / pixels
        rate = y_bpp + f.z_bits.sum() / pixels
        loss = MSE_WEIGHT * mse + lmbda * rate
        if mode == "literal":
            aux_bpp = aux_bits(self.aux, f).sum() / pixels
            loss = loss + cca_weight * (y_bpp - aux_bpp)
        else:
            # The auxiliary model learns from its own bits on detached inputs; with the loss off
            # it still learns, so that its rate is logged (and comparable) in the ablation too.
            own = aux_bits(self.aux, f, detach=True).sum() / pixels
            aux_bpp = own.detach()
            if mode == "two-player":
                frozen = {k: v.detach() for k, v in self.aux.named_parameters()}
                aux_bpp = aux_bits(self.aux, f, params=frozen).sum() / pixels
                loss = loss + cca_weight * (y_bpp - aux_bpp)
            loss = loss + own
        return {
            "loss": loss,
            "mse": mse.detach(),
            "bpp": rate.detach(),
            "y_bpp": y_bpp.detach(),
            "aux_bpp": aux_bpp.detach(),
        }


def aux_bits(aux: nn.Module, f: Forward, params: dict | None = None, detach: bool = False) -> torch.Tensor:
    """Bits of y (at the main model's rate points) under the auxiliary model, per image."""

    def d(t: torch.Tensor) -> torch.Tensor:
        return t.detach() if detach else t

    decoded = [d(t) for t in f.y_hat]
    total = 0
    for i, noisy in enumerate(f.y_noisy):
        args = (i, d(f.hyper_mean), d(f.hyper_scale), decoded)
        mu, sigma, _ = aux(*args) if params is None else functional_call(aux, params, args, strict=True)
        total = total + gaussian_bits(d(noisy), mu, sigma).sum((1, 2, 3))
    return total


@dataclass
class LossTerms:
    loss: torch.Tensor
    mse: float
    bpp: float  # estimated from likelihoods, y and z
    y_bpp: float
    aux_bpp: float  # y under the auxiliary model (the second rate term of L_CCA)

    @property
    def psnr(self) -> float:
        return 10 * math.log10(1 / max(self.mse, 1e-12))


def rd_loss(
    net: nn.Module, x: torch.Tensor, lmbda: float, mode: str = "two-player", cca_weight: float = 1.0
) -> LossTerms:
    """The loss of a ``CCATrainee`` (or its DDP wrapper) on x in [0, 1]."""
    out = net(x, lmbda, mode, cca_weight)
    return LossTerms(out["loss"], *(out[k].item() for k in ("mse", "bpp", "y_bpp", "aux_bpp")))
