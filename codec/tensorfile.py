"""safetensors model files of any codec: written byte-for-byte the same for the same weights, read
without pickle, and refused (``CorruptFileError`` naming the file) when their format, tensor names
or shapes are not the ones expected. The codecs' own loaders (``codec.mgcf.weights``,
``codec.cca.weights``) say which tensors those are.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from codec.errors import CorruptFileError

LUT_LIMIT = 1 << 25  # every table value (``codec.fixedpoint.build_luts``) is below 2**25


def st_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes whose header lists its keys in sorted order. ``safetensors`` writes its
    metadata (and may write its tensor entries) in hash-map order, which changes from process to
    process: the same weights then made a different file, and so a different hash and name, at
    every export. The header is the same JSON, reordered and padded to 8 bytes as the format wants;
    the tensor data after it is untouched (its offsets are relative to the header's end)."""
    data = st_save(tensors, metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n :]


def read_safetensors(data: bytes, fmt: str, version: str, source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and metadata of a safetensors file of format ``fmt`` v``version``, or
    ``CorruptFileError`` naming ``source``."""
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except Exception as exc:  # safetensors raises its own error types on any malformed header
        raise CorruptFileError(f"{source} is not a safetensors model file: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt or meta.get("format_version") != version:
        raise CorruptFileError(f"{source} is not a {fmt} v{version} model file")
    return tensors, meta


def check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str) -> None:
    """Refuse a model file whose tensors are not exactly the ones its configuration implies."""
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CorruptFileError(f"{source}: tensors missing {missing[:5]}, unexpected {extra[:5]}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise CorruptFileError(f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, not {shape}")
