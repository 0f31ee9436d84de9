"""CCA model files: safetensors (no pickle), named by the SHA-256 of their bytes, like MGCF's.

- ``float.*``: the trained weights in float16 (the encoder's g_a and h_a run from these, and
  training can start from them). The decoder's integer weights are derived from them on load:
  ``round(w * 2**16)`` of a float16 value is exact arithmetic, the same on every machine, so
  storing them too would only double the file.
- ``lut.*``: GELU and tanh tables; ``ytab`` / ``ztab``: the coding tables (``codec.lossy.tables``).
  These come from platform math (erf, exp, the learned CDF), so they are computed once here and
  stored; a coder never recomputes them.

The metadata holds the configuration and the rate point (``lmbda``) it was trained for. A file's
hash names it (``cca-<16 hex>.safetensors``), and every ``.cllc`` made with it names that hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from codec.errors import CorruptFileError
from codec.fixedpoint import build_luts
from codec.lossy import tables
from codec.lossy.config import CCAConfig
from codec.lossy.exact import exact_tensors
from codec.lossy.model import CCAModel
from codec.weights import write_named

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
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.cfg.to_json(),
                "lmbda": repr(float(lmbda))}  # fmt: skip
    return st_save(tensors, metadata)


def save_model(model: CCAModel, lmbda: float, directory: str | Path) -> Path:
    return write_named(serialize(model, lmbda), directory, file_name)


@dataclass(frozen=True)
class CCAModelFile:
    digest: bytes
    cfg: CCAConfig
    lmbda: float
    tensors: dict[str, torch.Tensor]

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1 :]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    def float_model(self) -> CCAModel:
        model = CCAModel(self.cfg)
        model.load_state_dict({k: v.float() for k, v in self.group("float").items()})
        return model.eval()

    def y_tables(self) -> list[torch.Tensor]:
        return tables.unpack(self.tensors["ytab.packed"], self.tensors["ytab.lengths"])

    def z_tables(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        return tables.unpack(self.tensors["ztab.packed"], self.tensors["ztab.lengths"]), self.tensors["ztab.lows"]


def parse_model(data: bytes) -> CCAModelFile:
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    except Exception as exc:
        raise CorruptFileError(f"not a safetensors model file: {exc}") from exc
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CorruptFileError(f"not a {FORMAT} v{FORMAT_VERSION} model file")
    return CCAModelFile(hashlib.sha256(data).digest(), CCAConfig.from_json(meta["config"]), float(meta["lmbda"]),
                        tensors)  # fmt: skip


def load_model_file(path: str | Path) -> CCAModelFile:
    return parse_model(Path(path).read_bytes())
