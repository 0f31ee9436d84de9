"""Per-image low-rank adapters (CALLIC section 4): layout, starting values, merge, ADPT section.

Which layers, and how [choice, the paper gives only "about 25K" and "including the depth-wise
convs"]: in every block, LoRA on the five 1x1 layers (``gate_a``, ``gate_v``, ``gate_o``, ``fc1``,
``fc2``) and a Tucker-style update on the masked depth-wise conv; LoRA on the head.

- LoRA of a 1x1 layer ``y = x W^T + b``: ``W^T += down @ up`` (``down`` in x rank, ``up`` rank x out).
- Tucker of a depth-wise k x k kernel ``K`` (C, k, k):
  ``dK[m, i, j] = sum_abc core[a, b, c] channel[m, a] row[i, b] col[j, c]``, applied as
  ``mask * (K + dK)``, so the causal mask survives (the exact path only ever reads visible taps).

Default ranks: LoRA 2, Tucker 2 x 3 x 3, i.e. 13,592 parameters on the paper's MGCF, about half
the paper's 25K [choice, measured]: every parameter must pay for its bits, and on a kodim23 crop
(T = 20) rank 2 gave the best gain net of adapter bits (0.063 bpsp at 768x512 scale, against
0.053 for rank 4 and 0.046 for rank 1).

Every transmitted number is an integer multiple of ``STEP`` = 2**-7 [choice: the paper's 0.05
is too coarse for our parametrization; in the same runs 2**-7 beat 2**-8 and 2**-5 diverged].
A factor is ``STEP * (start + delta)``: ``up`` and ``core`` start at zero, ``down`` at about
+-1/sqrt(fan in) and the three Tucker factors at +-0.5, with signs from a hash of their position
(integer arithmetic, the same on both sides), so gradients flow from the first step and the file
carries only the small integer ``delta``. Merging into the exact model's integer weights
(``WEIGHT_FRAC`` = 16 bits): a LoRA product is ``STEP**2 * int`` = ``4 * int`` weight units (no
rounding at all); a Tucker product is ``STEP**4 * int``, rounded half up to weight units. Encoder
and decoder both merge from the same integers, so their exact models are identical.

ADPT section (critical: a decoder that does not know it refuses the file)::

    u8 version (1) | u8 LoRA rank | u8 Tucker ranks r1, r2, r3 | u8 step exponent (5)
    u8 number of tensors n | n x u8 prior-scale index | range-coded deltas (u32 LE words)

Deltas are coded tensor by tensor, in layout order, as symbols ``delta + 128`` under a zero-mean
discretized logistic with scale ``2**(index - 4)`` steps (index 0..11), the index chosen per tensor by the
encoder (whichever codes that tensor shortest). Its frequency table is built from the model's
stored sigmoid table (``codec.mgcf.tables.prior_table``), so it is exact on every machine.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from codec.defaults import DEFAULT_LORA_RANK, DEFAULT_TUCKER_RANKS
from codec.entropy import Decoder, Encoder
from codec.errors import CorruptFileError, UnsupportedError
from codec.fixedpoint import WEIGHT_FRAC, check_bounds
from codec.mgcf.config import MGCFConfig
from codec.mgcf.tables import NUM_SYMBOLS, prior_table
from codec.mgcf.wavefront import kernel_offsets

SECTION = b"ADPT"
SECTION_VERSION = 1
STEP_EXP = 7
STEP = 2.0**-STEP_EXP
MAX_DELTA = 127  # deltas are symbols 1..255 of a 256-symbol alphabet
PRIOR_SCALE_EXPS = tuple(range(-4, 8))  # prior scale 2**e steps; the index is stored per tensor
MAX_LORA_RANK = 32
MAX_TUCKER_RANK = 16
LORA_LAYERS = ("gate_a", "gate_v", "gate_o", "fc1", "fc2")
TUCKER_START = 0.5  # Tucker factors start at +-0.5 (in steps: 0.5 / STEP)

_HEAD = struct.Struct("<BBBBBBB")


@dataclass(frozen=True)
class AdapterSpec:
    """Ranks of the adapters (the layers are fixed by the model's layout, see the module docstring)."""

    lora_rank: int = DEFAULT_LORA_RANK
    tucker_ranks: tuple[int, int, int] = DEFAULT_TUCKER_RANKS

    def __post_init__(self) -> None:
        if not 1 <= self.lora_rank <= MAX_LORA_RANK:
            raise ValueError(f"LoRA rank must be in 1..{MAX_LORA_RANK}")
        if len(self.tucker_ranks) != 3 or not all(1 <= r <= MAX_TUCKER_RANK for r in self.tucker_ranks):
            raise ValueError(f"Tucker ranks must be three numbers in 1..{MAX_TUCKER_RANK}")


@dataclass(frozen=True)
class Factor:
    """One transmitted tensor: its name, shape, and the magnitude of its +- starting pattern."""

    name: str
    shape: tuple[int, ...]
    start: int  # 0: starts at zero

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Slot:
    """One adapted layer of the model (an exact-tensor prefix) and its factors, in coding order."""

    layer: str
    kind: str  # "lora" or "tucker"
    factors: tuple[Factor, ...]


@cache
def layout(cfg: MGCFConfig, spec: AdapterSpec) -> tuple[Slot, ...]:
    c, hidden, r = cfg.width, cfg.width * cfg.mlp_ratio, spec.lora_rank
    r1, r2, r3 = spec.tucker_ranks
    dims = {"gate_a": (c, c), "gate_v": (c, c), "gate_o": (c, c), "fc1": (c, hidden), "fc2": (hidden, c)}

    def lora(layer: str, fan_in: int, fan_out: int) -> Slot:
        start = max(1, round(1 / (math.sqrt(fan_in) * STEP)))  # about 1/sqrt(fan_in), like a default init
        down, up = Factor(layer + ".down", (fan_in, r), start), Factor(layer + ".up", (r, fan_out), 0)
        return Slot(layer, "lora", (down, up))

    tucker = round(TUCKER_START / STEP)
    slots = []
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        slots += [lora(p + name, *dims[name]) for name in LORA_LAYERS]
        k = cfg.kernel
        slots.append(
            Slot(
                p + "dw",
                "tucker",
                (
                    Factor(p + "dw.core", (r1, r2, r3), 0),
                    Factor(p + "dw.channel", (c, r1), tucker),
                    Factor(p + "dw.row", (k, r2), tucker),
                    Factor(p + "dw.col", (k, r3), tucker),
                ),
            )
        )
    slots.append(lora("head", c, cfg.head_channels))
    return tuple(slots)


def factors(cfg: MGCFConfig, spec: AdapterSpec) -> list[Factor]:
    return [f for slot in layout(cfg, spec) for f in slot.factors]


def parameter_count(cfg: MGCFConfig, spec: AdapterSpec) -> int:
    return sum(f.numel for f in factors(cfg, spec))


def start_values(factor: Factor, salt: int) -> torch.Tensor:
    """The factor's starting integers: +-``start`` with signs from splitmix64 of (salt, position).

    Pure integer arithmetic (numpy uint64 wraps modulo 2**64), so it is the same everywhere.
    """
    if factor.start == 0:
        return torch.zeros(factor.shape, dtype=torch.int64)
    with np.errstate(over="ignore"):
        z = np.arange(factor.numel, dtype=np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    signs = np.where(z >> np.uint64(63), -1, 1).astype(np.int64)
    return torch.from_numpy(signs * factor.start).reshape(factor.shape)


@dataclass
class AdapterSet:
    """The integer deltas of one image's adapters, as transmitted (name -> int64 tensor)."""

    spec: AdapterSpec
    deltas: dict[str, torch.Tensor]

    def values(self, cfg: MGCFConfig) -> dict[str, torch.Tensor]:
        """start + delta of every factor, in steps (int64)."""
        return {f.name: start_values(f, salt) + self.deltas[f.name] for salt, f in enumerate(factors(cfg, self.spec))}


# ---------------------------------------------------------------- merging into the exact model


def _round_shift(x: torch.Tensor, shift: int) -> torch.Tensor:
    """x * 2**-shift rounded half up, for integer-valued float64 x (exact: a dyadic floor)."""
    if shift <= 0:
        return x * 2.0**-shift
    return torch.floor((x + 2.0 ** (shift - 1)) * 2.0**-shift)


def merge(cfg: MGCFConfig, tensors: dict[str, torch.Tensor], adapters: AdapterSet) -> dict[str, torch.Tensor]:
    """The exact model's integer tensors (float64) with the adapters added; the inputs are not changed.

    Raises ``ValueError`` when a merged layer could overflow the exact accumulator.
    """
    out = dict(tensors)
    vals = adapters.values(cfg)
    for slot in layout(cfg, adapters.spec):
        key = slot.layer + ".weight"
        base = tensors[key]
        f = {x.name.rsplit(".", 1)[1]: vals[x.name].to(base.device, torch.float64) for x in slot.factors}
        if slot.kind == "lora":
            delta = _round_shift(f["down"] @ f["up"], 2 * STEP_EXP - WEIGHT_FRAC)
        else:
            kernel = torch.einsum("abc,ma,ib,jc->mij", f["core"], f["channel"], f["row"], f["col"])
            r = cfg.kernel // 2
            taps = torch.stack([kernel[:, dr + r, dc + r] for dr, dc in kernel_offsets(cfg.kernel, strict=False)])
            delta = _round_shift(taps, 4 * STEP_EXP - WEIGHT_FRAC)
        out[key] = base + delta
        check_bounds(out[key], tensors[slot.layer + ".bias"], (0,))
    return out


def float_deltas(cfg: MGCFConfig, adapters: AdapterSet) -> dict[str, torch.Tensor]:
    """The adapters as additions to the float model's weights (``MGCF.state_dict`` names and
    shapes), for a model that further fine-tuning starts from (a corpus-adapted model file): a
    linear layer's ``(down @ up)^T``, a depth-wise kernel's Tucker product (masked in the forward
    pass, as the kernel is). The coding path never uses them: it runs the exact ``merge``."""
    vals = adapters.values(cfg)
    out = {}
    for slot in layout(cfg, adapters.spec):
        f = {x.name.rsplit(".", 1)[1]: vals[x.name].double() for x in slot.factors}
        if slot.kind == "lora":
            delta = (f["down"] @ f["up"]).T * STEP**2
        else:
            delta = torch.einsum("abc,ma,ib,jc->mij", f["core"], f["channel"], f["row"], f["col"]).unsqueeze(1)
            delta = delta * STEP**4
        out[slot.layer + ".weight"] = delta.float()
    return out


# ---------------------------------------------------------------- the ADPT section


def _symbols(delta: torch.Tensor) -> np.ndarray:
    return (delta.reshape(-1).clamp(-MAX_DELTA, MAX_DELTA) + 128).to(torch.int32).numpy()


def _best_scale(symbols: np.ndarray, tables: list[np.ndarray]) -> int:
    """Index of the prior table that codes ``symbols`` in the fewest bits (a choice the file records)."""
    counts = np.bincount(symbols, minlength=NUM_SYMBOLS)
    bits = [-(counts * np.log2((t + 1.0) / 2**24)).sum() for t in tables]
    return int(np.argmin(bits))


def _prior_tables(sigmoid_lut: torch.Tensor) -> list[np.ndarray]:
    lut = sigmoid_lut.to("cpu").long()
    return [prior_table(e, lut).numpy() for e in PRIOR_SCALE_EXPS]


def encode_section(cfg: MGCFConfig, adapters: AdapterSet, sigmoid_lut: torch.Tensor) -> bytes:
    spec = adapters.spec
    tables = _prior_tables(sigmoid_lut)
    fs = factors(cfg, spec)
    symbols = [_symbols(adapters.deltas[f.name]) for f in fs]
    scales = [_best_scale(s, tables) for s in symbols]
    coder = Encoder()
    for s, index in zip(symbols, scales, strict=True):
        coder.encode_iid(s, tables[index])
    head = _HEAD.pack(SECTION_VERSION, spec.lora_rank, *spec.tucker_ranks, STEP_EXP, len(fs))
    return head + bytes(scales) + coder.finish()


def decode_section(cfg: MGCFConfig, data: bytes, sigmoid_lut: torch.Tensor) -> AdapterSet:
    """ADPT payload -> the image's adapters; every size is checked before anything is allocated."""
    if len(data) < _HEAD.size:
        raise CorruptFileError("ADPT section too short")
    version, rank, r1, r2, r3, step_exp, n = _HEAD.unpack_from(data, 0)
    if version != SECTION_VERSION or step_exp != STEP_EXP:
        raise UnsupportedError(f"adapter section version {version} / step 2**-{step_exp} is not supported")
    try:
        spec = AdapterSpec(rank, (r1, r2, r3))
    except ValueError as exc:
        raise CorruptFileError(f"ADPT section: {exc}") from exc
    fs = factors(cfg, spec)
    if n != len(fs) or len(data) < _HEAD.size + n:
        raise CorruptFileError(f"ADPT section lists {n} tensors, the model's adapters have {len(fs)}")
    scales = data[_HEAD.size : _HEAD.size + n]
    if max(scales, default=0) >= len(PRIOR_SCALE_EXPS):
        raise CorruptFileError("ADPT section: unknown prior scale")
    tables = _prior_tables(sigmoid_lut)
    coder = Decoder(data[_HEAD.size + n :])
    deltas = {}
    for f, index in zip(fs, scales, strict=True):
        symbols = coder.decode_iid(tables[index], f.numel)
        deltas[f.name] = (torch.from_numpy(symbols.astype(np.int64)) - 128).reshape(f.shape)
    return AdapterSet(spec, deltas)
