"""callic's codecs: pure compression, arrays in and bytes out (no Ray, no storage).

``encode(image) -> bytes`` and ``decode(bytes) -> Raster`` (``.pixels`` is the numpy array, with
mode, palette and metadata beside it). See ``codec.api`` for the file format.

``import codec`` is cheap: the names below are loaded on first use (PEP 562), so a tool that only
reads headers (``codec.info``, ``callic info``, ``callic --help``) never imports torch. Submodules
(``codec.api``, ``codec.cca``...) are reachable as attributes after a plain ``import codec``, as
they were when this package imported ``codec.api`` eagerly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from codec.errors import (
    CallicError,
    CorruptFileError,
    ImageReadError,
    ModelNotFoundError,
    UnsupportedError,
    VerificationError,
)

if TYPE_CHECKING:
    from codec.api import encode, load_model
    from codec.header import info
    from codec.raster import Raster
    from codec.reading import decode

# name -> the module that defines it; only ``codec.api`` imports torch (``decode`` imports it
# only for a file of the learned or the lossy coder).
_LAZY = {
    "decode": "codec.reading",
    "encode": "codec.api",
    "load_model": "codec.api",
    "info": "codec.header",
    "Raster": "codec.raster",
}

__all__ = [
    "CallicError",
    "CorruptFileError",
    "ImageReadError",
    "ModelNotFoundError",
    "Raster",
    "UnsupportedError",
    "VerificationError",
    "decode",
    "encode",
    "info",
    "load_model",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise  # the submodule exists but something it imports does not
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
