"""A learned factorized density for the hyper-latent z (Balle et al. 2018, "Variational image
compression with a scale hyperprior", appendix 6.1): per channel, a monotone function whose
sigmoid is the CDF; a bin's probability is the CDF difference across it.

Only training evaluates it; for coding, its CDF at the integers is turned once into integer
frequency tables that are stored with the model (``codec.cca.tables``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LIKELIHOOD_FLOOR = 1e-9


class FactorizedDensity(nn.Module):
    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(dims) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(dims) - 1):
            init = torch.log(torch.expm1(torch.tensor(1 / scale / dims[i + 1])))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), float(init))))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cdf(self, v: torch.Tensor) -> torch.Tensor:
        """v: (C, 1, N) values per channel -> (C, 1, N) CDF logits (monotone in v)."""
        for i, (m, b) in enumerate(zip(self.matrices, self.biases, strict=True)):
            v = torch.matmul(F.softplus(m), v) + b
            if i < len(self.factors):
                v = v + torch.tanh(self.factors[i]) * torch.tanh(v)
        return v

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """Probability of the unit bin around each value of z (B, C, H, W)."""
        b, c, h, w = z.shape
        v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower, upper = self.logits_cdf(v - 0.5), self.logits_cdf(v + 0.5)
        # Flip to the side where both sigmoids are small, for precision in the tails.
        sign = -torch.sign(lower + upper).detach()
        p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        return p.clamp_min(LIKELIHOOD_FLOOR).reshape(c, b, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def cdf(self, points: torch.Tensor) -> torch.Tensor:
        """CDF of every channel at ``points`` (N,) -> (C, N), in float64 for the tables."""
        c = self.matrices[0].shape[0]
        v = points.to(self.matrices[0]).reshape(1, 1, -1).expand(c, 1, -1)
        return torch.sigmoid(self.logits_cdf(v).double()).reshape(c, -1)
