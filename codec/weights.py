"""Model files: safetensors (no pickle), named and found by the SHA-256 of their bytes.

A model file holds three groups of tensors and its configuration in the safetensors metadata:

- ``float.*``: the float MGCF weights (training, per-image fine-tuning);
- ``exact.*``: their integer twin (``codec.quantize``), what the coding path runs;
- ``lut.*``: the lookup tables of the exact path (``codec.fixedpoint.build_luts``), stored so that a
  decoder never recomputes them with its own platform's math.

A ``.cllc`` file names the SHA-256 of the whole model file; ``find_model`` looks for
``mgcf-<first 16 hex digits>.safetensors`` in ``$CALLIC_MODEL_PATH`` (colon-separated folders),
then ``~/.cache/callic/models``, then the models shipped in the package, and checks the full hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from codec.config import MGCFConfig
from codec.errors import CorruptFileError, ModelNotFoundError
from codec.exact import ExactMGCF
from codec.fixedpoint import ACT_FRAC, WEIGHT_FRAC, build_luts
from codec.mgcf import MGCF
from codec.mixture import LOG_SCALE_MAX, LOG_SCALE_MIN
from codec.quantize import exact_tensors

FORMAT = "callic-mgcf"
FORMAT_VERSION = "1"
PACKAGE_MODELS = Path(__file__).parent / "models"
DEFAULT_MODEL_FILE = PACKAGE_MODELS / "DEFAULT"


def model_dirs() -> list[Path]:
    env = [Path(p) for p in os.environ.get("CALLIC_MODEL_PATH", "").split(os.pathsep) if p]
    return [*env, Path.home() / ".cache" / "callic" / "models", PACKAGE_MODELS]


def file_name(digest: bytes) -> str:
    return f"mgcf-{digest.hex()[:16]}.safetensors"


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
    return st_save(tensors, metadata)


def write_named(data: bytes, directory: str | Path, name_of: Callable[[bytes], str]) -> Path:
    """Write a model file in ``directory`` (atomically) under the name its hash gives; return the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name_of(hashlib.sha256(data).digest())
    with tempfile.NamedTemporaryFile(dir=directory, delete=False, suffix=".tmp") as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
    return path


def save_model(model: MGCF, directory: str | Path) -> Path:
    """Write ``model`` as ``mgcf-<hash>.safetensors`` in ``directory``; return the path."""
    return write_named(serialize(model), directory, file_name)


@dataclass(frozen=True)
class ModelFile:
    """A loaded model file: its hash, configuration, and tensor groups."""

    digest: bytes
    cfg: MGCFConfig
    tensors: dict[str, torch.Tensor]

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1 :]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    def float_model(self) -> MGCF:
        model = MGCF(self.cfg)
        model.load_state_dict(self.group("float"))
        return model

    def exact_model(self, device: str | torch.device = "cpu") -> ExactMGCF:
        return ExactMGCF(self.cfg, self.group("exact"), self.group("lut"), device)


def parse_model(data: bytes, expected: bytes | None = None) -> ModelFile:
    digest = hashlib.sha256(data).digest()
    if expected is not None and digest != expected:
        raise ModelNotFoundError(f"model file hash {digest.hex()[:16]} is not the requested {expected.hex()[:16]}")
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    except Exception as exc:
        raise CorruptFileError(f"not a safetensors model file: {exc}") from exc
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CorruptFileError(f"not a {FORMAT} v{FORMAT_VERSION} model file")
    return ModelFile(digest, MGCFConfig.from_json(meta["config"]), tensors)


def load_model_file(path: str | Path) -> ModelFile:
    return parse_model(Path(path).read_bytes())


def find_model(digest: bytes) -> Path:
    name = file_name(digest)
    for d in model_dirs():
        if (d / name).is_file():
            return d / name
    searched = ", ".join(str(d) for d in model_dirs())
    raise ModelNotFoundError(
        f"model {digest.hex()[:16]}… is not installed (looked in {searched}); "
        f"put {name} in one of those folders or in $CALLIC_MODEL_PATH"
    )


def default_model_path() -> Path:
    if not DEFAULT_MODEL_FILE.is_file():
        raise ModelNotFoundError("no default model is shipped with this installation")
    return PACKAGE_MODELS / DEFAULT_MODEL_FILE.read_text().strip()


@lru_cache(maxsize=4)
def exact_model_by_hash(digest: bytes, device: str) -> ExactMGCF:
    """The exact model a file names, loaded once per process and device."""
    return parse_model(find_model(digest).read_bytes(), expected=digest).exact_model(device)
