"""Model configuration: one frozen dataclass, so a config can be hashed, saved and compared."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class MGCFConfig:
    """Shape of the MGCF network (CALLIC section 1) and of its wavefront patches (section 2).

    The default is the paper's: 3 blocks of width 128, 7x7 depth-wise gating kernels, a mixture
    of K = 5 logistics and 64x64 patches, 574,514 parameters.
    """

    width: int = 128
    depth: int = 3
    kernel: int = 7
    mlp_ratio: int = 4
    mixtures: int = 5
    patch: int = 64

    def __post_init__(self) -> None:
        if self.kernel % 2 != 1 or self.kernel < 3:
            raise ValueError("kernel must be odd and >= 3")
        if not 1 <= self.width <= 256:
            # The exact layer norm sums squares of 23-bit values in int64; 256 channels is its limit.
            raise ValueError("width must be in 1..256")
        if self.depth < 1 or self.mixtures < 1 or self.mlp_ratio < 1:
            raise ValueError("depth, mixtures and mlp_ratio must be >= 1")
        if not 2 <= self.patch <= 256:
            raise ValueError("patch must be in 2..256")

    @property
    def head_channels(self) -> int:
        """Per mixture component: 1 weight logit, 3 means, 3 log-scales, 3 coupling coefficients."""
        return 10 * self.mixtures

    @classmethod
    def tiny(cls) -> MGCFConfig:
        """A configuration small enough for fast unit tests."""
        return cls(width=16, depth=1, kernel=5, mlp_ratio=2, mixtures=2, patch=8)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MGCFConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        data = json.loads(text)
        if not isinstance(data, dict) or set(data) - fields:
            raise ValueError(f"not an MGCF config: {text[:200]}")
        return cls(**data)
