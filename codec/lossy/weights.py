"""CCA model files: safetensors (no pickle), named by the SHA-256 of their bytes, like MGCF's.

``float.*`` holds the trained weights; the metadata holds the configuration and the rate point
(``lmbda``) the model was trained for. A file's hash names it (``cca-<16 hex>.safetensors``), and a
``.cllc`` made with it will name that hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from codec.errors import CorruptFileError
from codec.lossy.config import CCAConfig
from codec.lossy.model import CCAModel

FORMAT = "callic-cca"
FORMAT_VERSION = "1"


def file_name(digest: bytes) -> str:
    return f"cca-{digest.hex()[:16]}.safetensors"


def serialize(model: CCAModel, lmbda: float) -> bytes:
    tensors = {f"float.{k}": v.detach().float().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.cfg.to_json(),
                "lmbda": repr(float(lmbda))}  # fmt: skip
    return st_save(tensors, metadata)


def save_model(model: CCAModel, lmbda: float, directory: str | Path) -> Path:
    data = serialize(model, lmbda)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name(hashlib.sha256(data).digest())
    with tempfile.NamedTemporaryFile(dir=directory, delete=False, suffix=".tmp") as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
    return path


@dataclass(frozen=True)
class CCAModelFile:
    digest: bytes
    cfg: CCAConfig
    lmbda: float
    tensors: dict[str, torch.Tensor]

    def float_model(self) -> CCAModel:
        model = CCAModel(self.cfg)
        model.load_state_dict({k[6:]: v for k, v in self.tensors.items() if k.startswith("float.")})
        return model.eval()


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
