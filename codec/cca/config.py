"""Shape of the CCA lossy model: one frozen dataclass, hashed into the model file and compared."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


def power_slices(channels: int, groups: int, k: float) -> tuple[int, ...]:
    """Channel counts of the ``groups`` slices of y, proportional to ``i ** k`` (i = 1..groups).

    Every slice but the last is rounded down and the last takes the rest, which reproduces the
    paper's [8, 28, 56, 92, 136] for 320 channels and k = 1.7; k = 0 gives even groups.
    """
    weights = [(i + 1) ** k for i in range(groups)]
    sizes = [int(channels * w / sum(weights)) for w in weights[:-1]]
    sizes.append(channels - sum(sizes))
    if min(sizes) < 1:
        raise ValueError(f"{channels} channels cannot make {groups} slices with k = {k}")
    return tuple(sizes)


@dataclass(frozen=True)
class CCAConfig:
    """Widths and depths of every part (cca.md, "Architecture"); ``paper()`` is the 65M model.

    ``widths`` are g_a's four stage outputs (the last is y's channel count M); g_s mirrors them.
    The slice networks follow the authors' code: a support transform (1x1 into ``context``
    channels, ``context_naf`` NAF-blocks, long skip, 1x1 back) and a head of three 3x3 convolutions
    (-> ``context`` -> ``context_out`` -> slice); LRP is such a head on [transformed mean support,
    slice]. The hyper-synthesis branches run z -> ``hyper`` -> ``hyper`` -> M.
    """

    widths: tuple[int, int, int, int] = (192, 224, 256, 320)
    res_blocks: int = 3
    naf_blocks: int = 4
    hyper: int = 256
    z_channels: int = 192
    slices: int = 5
    k: float = 1.7
    context: int = 224
    context_naf: int = 4
    context_out: int = 128
    factorized_filters: tuple[int, ...] = (3, 3, 3)

    def __post_init__(self) -> None:
        if len(self.widths) != 4 or min(self.widths) < 4:
            raise ValueError("widths: four stage widths, each >= 4")
        if max(self.widths[:3]) > 256 or self.context > 256:
            # The exact layer norm (codec.fixedpoint) sums squares over at most 256 channels.
            raise ValueError("NAF-block widths must be <= 256")
        if self.res_blocks < 0 or self.naf_blocks < 0 or self.context_naf < 0:
            raise ValueError("block counts must be >= 0")
        power_slices(self.widths[3], self.slices, self.k)

    @property
    def latent(self) -> int:
        return self.widths[3]

    @property
    def slice_sizes(self) -> tuple[int, ...]:
        return power_slices(self.widths[3], self.slices, self.k)

    @classmethod
    def paper(cls) -> CCAConfig:
        return cls()

    @classmethod
    def small(cls) -> CCAConfig:
        """Trains in hours on one GPU (and, slowly, on a CPU): 5.4M parameters, 1/12 of the
        paper's, and a 10.8 MB model file per rate point."""
        return cls(
            widths=(48, 64, 96, 128),
            res_blocks=1,
            naf_blocks=1,
            hyper=96,
            z_channels=64,
            context=64,
            context_naf=1,
            context_out=48,
        )

    @classmethod
    def tiny(cls) -> CCAConfig:
        """For unit tests only."""
        return cls(
            widths=(8, 8, 12, 40),
            res_blocks=1,
            naf_blocks=1,
            hyper=12,
            z_channels=8,
            context=12,
            context_naf=1,
            context_out=8,
            factorized_filters=(3,),
        )

    @classmethod
    def named(cls, name: str) -> CCAConfig:
        presets = {"paper": cls.paper, "small": cls.small, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown CCA configuration {name!r} (one of {', '.join(presets)})")
        return presets[name]()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CCAConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        data = json.loads(text)
        if not isinstance(data, dict) or set(data) - fields:
            raise ValueError(f"not a CCA config: {text[:200]}")
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**(data | tuples))
