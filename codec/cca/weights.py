"""CCA model files: safetensors (no pickle), named by the SHA-256 of their bytes, like MGCF's.

- ``float.*``: the trained weights in float16 (the encoder's g_a and h_a run from these, and
  training can start from them). The decoder's integer weights are derived from them on load:
  ``round(w * 2**16)`` of a float16 value is exact arithmetic, the same on every machine, so
  storing them too would only double the file.
- ``lut.*``: GELU and tanh tables; ``ytab`` / ``ztab``: the coding tables (``codec.cca.tables``).
  These come from platform math (erf, exp, the learned CDF), so they are computed once here and
  stored; a coder never recomputes them.

The metadata holds the configuration and the rate point (``lmbda``) it was trained for. A file's
hash names it (``cca-<16 hex>.safetensors``), and every ``.cllc`` made with it names that hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from codec.cca import tables
from codec.cca.config import CCAConfig
from codec.cca.exact import exact_tensors
from codec.cca.model import CCAModel
from codec.errors import CorruptFileError
from codec.fixedpoint import build_luts
from codec.modelfiles import read_model_bytes, write_named
from codec.tensorfile import LUT_LIMIT, check_tensors, read_safetensors, st_bytes

FORMAT = "callic-cca"
FORMAT_VERSION = "1"


def file_name(digest: bytes) -> str:
    return f"cca-{digest.hex()[:16]}.safetensors"


def _int(t: torch.Tensor) -> torch.Tensor:
    return t.long().int().contiguous()  # every table value is below 2**25


def serialize(model: CCAModel, lmbda: float) -> bytes:
    model = model.float().eval()
    tensors = {f"float.{k}": v.detach().half().contiguous() for k, v in model.state_dict().items()}
    # The tables of z come from the weights as stored, so that they match what a decoder loads.
    stored = CCAModel(model.cfg)
    stored.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    model = stored.eval()
    exact_tensors(model)  # refuses weights the exact path cannot hold, now rather than at decode
    luts = build_luts(-3.0, 6.0)  # only GELU and tanh are used; their tables do not depend on the range
    tensors |= {f"lut.{k}": _int(luts[k]) for k in ("gelu", "tanh")}
    tensors["ytab.packed"], tensors["ytab.lengths"] = tables.pack(tables.gaussian_tables())
    ztabs, zlows = tables.factorized_tables(model.z_density)
    tensors["ztab.packed"], tensors["ztab.lengths"] = tables.pack(ztabs)
    tensors["ztab.lows"] = zlows
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_json(),
        "lmbda": repr(float(lmbda)),
    }
    return st_bytes(tensors, metadata)


def save_model(model: CCAModel, lmbda: float, directory: str | Path) -> Path:
    return write_named(serialize(model, lmbda), directory, file_name)


@dataclass(frozen=True)
class CCAModelFile:
    digest: bytes
    cfg: CCAConfig
    lmbda: float
    tensors: dict[str, torch.Tensor]
    source: str = "model file"  # where it was read from, for errors

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1 :]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    def float_model(self) -> CCAModel:
        """The float model; ``CorruptFileError`` when the file's weights are not the ones its
        configuration implies (a missing, extra or misshaped tensor)."""
        model = CCAModel(self.cfg)
        try:
            model.load_state_dict({k: v.float() for k, v in self.group("float").items()})
        except RuntimeError as exc:
            raise CorruptFileError(f"{self.source}: weights do not fit the configuration: {exc}") from exc
        return model.eval()

    def y_tables(self) -> list[torch.Tensor]:
        return tables.unpack(self.tensors["ytab.packed"], self.tensors["ytab.lengths"])

    def z_tables(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        return tables.unpack(self.tensors["ztab.packed"], self.tensors["ztab.lengths"]), self.tensors["ztab.lows"]


def _table_shapes(cfg: CCAConfig, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Every table the configuration implies (the float weights are checked by ``float_model``);
    a coding table's width is its own, checked against its lengths by ``_check_values``."""
    luts = {f"lut.{k}": (int(v.numel()),) for k, v in build_luts(-3.0, 6.0).items() if k in ("gelu", "tanh")}
    shapes = {}
    for group, count in (("ytab", None), ("ztab", cfg.z_channels)):
        packed = tensors.get(f"{group}.packed")
        rows = count if count is not None else (packed.shape[0] if packed is not None and packed.ndim == 2 else 0)
        width = packed.shape[1] if packed is not None and packed.ndim == 2 else 0
        shapes |= {f"{group}.packed": (rows, width), f"{group}.lengths": (rows,)}
    return luts | shapes | {"ztab.lows": (cfg.z_channels,)}


def _check_values(tensors: dict[str, torch.Tensor], source: str) -> None:
    for name, t in tensors.items():
        if name.startswith("float."):
            if t.dtype != torch.float16 or not bool(torch.isfinite(t).all()):
                raise CorruptFileError(f"{source}: tensor {name} is not finite float16")
        elif t.dtype not in (torch.int32, torch.int64) or (t.numel() and max(-int(t.min()), int(t.max())) >= LUT_LIMIT):
            raise CorruptFileError(f"{source}: tensor {name} is not a table of integers below 2**25")
    for group in ("ytab", "ztab"):
        lengths, width = tensors[f"{group}.lengths"], tensors[f"{group}.packed"].shape[1]
        if lengths.numel() and (int(lengths.min()) < 2 or int(lengths.max()) > width):
            raise CorruptFileError(f"{source}: {group} lengths outside 2..{width}")


def parse_model(data: bytes, source: str = "model file") -> CCAModelFile:
    """A CCA model file's bytes -> ``CCAModelFile``, every tensor's name, shape and type checked;
    ``CorruptFileError`` naming ``source``."""
    tensors, meta = read_safetensors(data, FORMAT, FORMAT_VERSION, source)
    try:
        cfg, lmbda = CCAConfig.from_json(meta["config"]), float(meta["lmbda"])
    except (KeyError, TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise CorruptFileError(f"{source}: bad configuration: {exc}") from exc
    tables = {k: v for k, v in tensors.items() if not k.startswith("float.")}
    check_tensors(tables, _table_shapes(cfg, tables), source)
    _check_values(tensors, source)
    return CCAModelFile(hashlib.sha256(data).digest(), cfg, lmbda, tensors, source)


def load_model_file(path: str | Path) -> CCAModelFile:
    return parse_model(read_model_bytes(path), source=str(path))
