"""callic's codecs: pure compression, arrays in and bytes out (no Ray, no storage).

``encode(image) -> bytes`` and ``decode(bytes) -> Raster`` (``.pixels`` is the numpy array, with
mode, palette and metadata beside it). See ``codec.api`` for the file format.
"""

from codec.api import decode, encode, info, load_model
from codec.errors import (
    CallicError,
    CorruptFileError,
    ImageReadError,
    ModelNotFoundError,
    UnsupportedError,
    VerificationError,
)
from codec.raster import Raster

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
