"""Model files: safetensors (no pickle), named and found by the SHA-256 of their bytes.

A model file holds three groups of tensors and its configuration in the safetensors metadata:

- ``float.*``: the float MGCF weights (training, per-image fine-tuning);
- ``exact.*``: their integer twin (``codec.mgcf.quantize``), what the coding path runs;
- ``lut.*``: the lookup tables of the exact path (``codec.fixedpoint.build_luts``), stored so that a
  decoder never recomputes them with its own platform's math.

A *corpus-adapted* model file (format ``callic-mgcf-adapted``, ``codec.mgcf.corpus``) is small: it
names its base model by SHA-256 and holds one ADPT section (``codec.mgcf.adapters``) of adapters
fine-tuned on a corpus. Loading it finds the base by hash (a plain model: an adapted model never
adapts another), checks it as above, merges the adapters into its integer weights exactly
(``adapters.merge``, the same on every machine) and adds their float twin to the float weights:
what comes out is an ordinary ``ModelFile`` under the adapted file's own hash, which files name
and jobs pin like any other; per-image adapters then merge on top of it.

A ``.cllc`` file names the SHA-256 of the whole model file; ``find_model`` looks for
``mgcf-<first 16 hex digits>.safetensors`` through the one model registry of every codec
(``codec.modelfiles``: search path, naming, shipped lists, digests).

Loading checks everything a decoder relies on before using it: a regular file of at most
``MAX_MODEL_BYTES``, the configuration, every tensor's name, shape and type against what the
configuration implies, and the exactness bound of every integer layer (its worst-case accumulator
stays below 2**53, as checked when the model was saved; ``codec.fixedpoint.check_bounds``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from codec.errors import CorruptFileError, ModelNotFoundError
from codec.fixedpoint import ACT_FRAC, WEIGHT_FRAC, build_luts, check_bounds
from codec.mgcf import adapters
from codec.mgcf.config import MGCFConfig
from codec.mgcf.exact import ExactMGCF
from codec.mgcf.mixture import LOG_SCALE_MAX, LOG_SCALE_MIN
from codec.mgcf.model import MGCF
from codec.mgcf.quantize import exact_tensors
from codec.mgcf.wavefront import kernel_offsets
from codec.modelfiles import (
    ADAPTED_FORMAT,
    base_of,
    find_by_hash,
    header_metadata,
    mgcf_file_name,
    read_model_bytes,
    write_named,
)
from codec.tensorfile import LUT_LIMIT, check_tensors, read_safetensors, st_bytes

FORMAT = "callic-mgcf"
FORMAT_VERSION = "1"
EXACT_LIMIT = 1 << 53  # integers beyond it do not survive float64
ADAPTED_FORMAT_VERSION = "1"
MAX_ADAPTED_SECTION = 16 << 20  # bytes; rank-32 adapters of the paper's MGCF code in ~100 KB


file_name = mgcf_file_name


def _compact(t: torch.Tensor) -> torch.Tensor:
    """Integer tensor as int32 when every value fits (most weights and all tables), else int64."""
    t = t.long().contiguous()
    return t.int() if t.numel() == 0 or int(t.abs().max()) < 2**31 else t


def serialize(model: MGCF) -> bytes:
    tensors = {f"float.{k}": v.detach().float().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"exact.{k}": _compact(v) for k, v in exact_tensors(model).items()}
    tensors |= {f"lut.{k}": _compact(v) for k, v in build_luts(LOG_SCALE_MIN, LOG_SCALE_MAX).items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_json(),
        "fixed_point": json.dumps(
            {"act_frac": ACT_FRAC, "weight_frac": WEIGHT_FRAC, "log_scale": [LOG_SCALE_MIN, LOG_SCALE_MAX]}
        ),
    }
    return st_bytes(tensors, metadata)


def save_model(model: MGCF, directory: str | Path) -> Path:
    """Write ``model`` as ``mgcf-<hash>.safetensors`` in ``directory``; return the path."""
    return write_named(serialize(model), directory, file_name)


@dataclass(frozen=True)
class ModelFile:
    """A loaded model file: its hash, configuration, and tensor groups."""

    digest: bytes
    cfg: MGCFConfig
    tensors: dict[str, torch.Tensor]
    base: bytes | None = None  # a corpus-adapted model's base (its SHA-256); None for a plain model

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1 :]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    def float_model(self) -> MGCF:
        model = MGCF(self.cfg)
        model.load_state_dict(self.group("float"))
        return model

    def exact_model(self, device: str | torch.device = "cpu") -> ExactMGCF:
        return ExactMGCF(self.cfg, self.group("exact"), self.group("lut"), device)


def _exact_shape(name: str, shape: tuple[int, ...], cfg: MGCFConfig) -> tuple[int, ...]:
    """Shape of the integer twin (``codec.mgcf.quantize``) of float tensor ``name``."""
    if name == "embed.weight":  # (out, in, 3, 3) -> (visible taps * in, out)
        return (len(kernel_offsets(3, strict=True)) * shape[1], shape[0])
    if name.endswith("dw.weight"):  # depth-wise (C, 1, k, k) -> (visible taps, C)
        return (len(kernel_offsets(cfg.kernel, strict=False)), shape[0])
    return shape[::-1] if len(shape) == 2 else shape  # linear layers multiply from the left


@lru_cache(maxsize=1)
def _lut_shapes() -> dict[str, tuple[int, ...]]:
    return {f"lut.{k}": tuple(v.shape) for k, v in build_luts(LOG_SCALE_MIN, LOG_SCALE_MAX).items()}


def _expected_shapes(cfg: MGCFConfig, tensor_count: int, source: str) -> dict[str, tuple[int, ...]]:
    if cfg.depth > tensor_count:  # before building even a shapeless model of that depth
        raise CorruptFileError(f"{source}: configuration of depth {cfg.depth} with {tensor_count} tensors")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated, however large the configuration
            state = {k: tuple(v.shape) for k, v in MGCF(cfg).state_dict().items()}
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. a width of 16.5
        raise CorruptFileError(f"{source}: bad configuration {cfg}: {exc}") from exc
    out = {f"float.{k}": v for k, v in state.items()}
    out |= {f"exact.{k}": _exact_shape(k, v, cfg) for k, v in state.items()}
    return out | _lut_shapes()


def _check_values(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Types and the exactness bounds: a decoder must never run integer layers that could round."""
    for name, t in tensors.items():
        want_float = name.startswith("float.")
        if (t.dtype == torch.float32) != want_float or (not want_float and t.dtype not in (torch.int32, torch.int64)):
            raise CorruptFileError(f"{source}: tensor {name} is {t.dtype}")
        if want_float and not bool(torch.isfinite(t).all()):
            raise CorruptFileError(f"{source}: tensor {name} holds NaN or infinity")
        limit = LUT_LIMIT if name.startswith("lut.") else EXACT_LIMIT
        if not want_float and t.numel() and (int(t.max()) >= limit or int(t.min()) <= -limit):
            raise CorruptFileError(f"{source}: tensor {name} holds values of 2**{limit.bit_length() - 1} or more")
    for name, weight in tensors.items():
        if name.startswith("exact.") and name.endswith(".weight") and ".norm" not in name:
            try:
                check_bounds(weight.double(), tensors[name[: -len("weight")] + "bias"].double(), (0,))
            except ValueError as exc:
                raise CorruptFileError(f"{source}: layer {name[6:-7]}: {exc}") from exc


def parse_model(
    data: bytes, expected: bytes | None = None, source: str = "model file", adapted: bool = True
) -> ModelFile:
    """A model file's bytes -> ``ModelFile``, every tensor checked; ``CorruptFileError`` naming
    ``source`` (``ModelNotFoundError`` when it is not the ``expected`` hash, or when a corpus-adapted
    file's base is not installed). ``adapted``: whether a corpus-adapted file is accepted."""
    digest = hashlib.sha256(data).digest()
    if expected is not None and digest != expected:
        raise ModelNotFoundError(f"{source} has hash {digest.hex()[:16]}, not the requested {expected.hex()[:16]}")
    if header_metadata(data).get("format") == ADAPTED_FORMAT:
        if not adapted:
            raise CorruptFileError(f"{source}: an adapted model cannot be the base of another")
        return _parse_adapted(data, digest, source)
    tensors, meta = read_safetensors(data, FORMAT, FORMAT_VERSION, source)
    try:
        cfg = MGCFConfig.from_json(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise CorruptFileError(f"{source}: bad configuration: {exc}") from exc
    check_tensors(tensors, _expected_shapes(cfg, len(tensors), source), source)
    _check_values(tensors, source)
    return ModelFile(digest, cfg, tensors)


# ---------------------------------------------------------------- corpus-adapted model files


def serialize_adapted(base: ModelFile, corpus: adapters.AdapterSet) -> bytes:
    """A corpus-adapted model file: ``base``'s hash and configuration, and ``corpus`` as an ADPT section."""
    if base.base is not None:
        raise ValueError("an adapted model cannot be the base of another")
    section = adapters.encode_section(base.cfg, corpus, base.group("lut")["sigmoid"])
    metadata = {
        "format": ADAPTED_FORMAT,
        "format_version": ADAPTED_FORMAT_VERSION,
        "base": base.digest.hex(),
        "config": base.cfg.to_json(),
    }
    return st_bytes({"adapters": torch.frombuffer(bytearray(section), dtype=torch.uint8)}, metadata)


def save_adapted(base: ModelFile, corpus: adapters.AdapterSet, directory: str | Path) -> Path:
    return write_named(serialize_adapted(base, corpus), directory, file_name)


def _parse_adapted(data: bytes, digest: bytes, source: str) -> ModelFile:
    tensors, meta = read_safetensors(data, ADAPTED_FORMAT, ADAPTED_FORMAT_VERSION, source)
    base_digest = base_of(data)
    assert base_digest is not None  # the format was checked
    section = tensors.get("adapters")
    if set(tensors) != {"adapters"} or section is None or section.dtype != torch.uint8 or section.dim() != 1:
        raise CorruptFileError(f"{source}: an adapted model holds one uint8 tensor 'adapters' only")
    if section.numel() > MAX_ADAPTED_SECTION:
        raise CorruptFileError(f"{source}: adapter section of {section.numel()} bytes (at most {MAX_ADAPTED_SECTION})")
    try:
        path, base_data = find_by_hash(base_digest, file_name(base_digest))
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{source} adapts model {base_digest.hex()[:16]}: {exc}") from None
    base = parse_model(base_data, expected=base_digest, source=str(path), adapted=False)
    if meta.get("config") != base.cfg.to_json():
        raise CorruptFileError(f"{source}: its configuration is not that of its base model {path}")
    luts = base.group("lut")
    try:
        corpus = adapters.decode_section(base.cfg, section.numpy().tobytes(), luts["sigmoid"])
        exact = adapters.merge(base.cfg, {k: v.double() for k, v in base.group("exact").items()}, corpus)
    except ValueError as exc:  # CorruptFileError is one; merge's overflow check is another
        raise CorruptFileError(f"{source}: its adapters do not fit model {base_digest.hex()[:16]}: {exc}") from None
    floats = base.group("float")
    for name, delta in adapters.float_deltas(base.cfg, corpus).items():
        floats[name] = floats[name] + delta
    merged = {f"float.{k}": v for k, v in floats.items()}
    merged |= {f"exact.{k}": _compact(v) for k, v in exact.items()}
    merged |= {f"lut.{k}": v for k, v in luts.items()}
    _check_values(merged, source)
    return ModelFile(digest, base.cfg, merged, base_digest)


def load_model_file(path: str | Path) -> ModelFile:
    return parse_model(read_model_bytes(path), source=str(path))


def find_model(digest: bytes) -> Path:
    return find_by_hash(digest, file_name(digest))[0]


@lru_cache(maxsize=4)
def exact_model_by_hash(digest: bytes, device: str) -> ExactMGCF:
    """The exact model a file names, loaded once per process and device."""
    path, data = find_by_hash(digest, file_name(digest))
    return parse_model(data, expected=digest, source=str(path)).exact_model(device)
