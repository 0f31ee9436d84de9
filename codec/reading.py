"""``decode``: any ``.cllc`` file back to its image, whichever coder made it, or an error.

The shared half of decoding: the HEAD and every section are checked (``codec.header``), the
palette, transparency and metadata before any pixel, then the coder the HEAD names
(``codec.registry``) decodes the pixels, which must have the HEAD's shape and type and the hash
it stores. Torch-free: only the learned and lossy coders' decoders import torch, when a file
needs them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from codec.container import Container
from codec.errors import CorruptFileError, VerificationError
from codec.header import CODER_MGCF, calibration_scheme, read_header
from codec.images import decode_transparency, split_chunks
from codec.raster import Raster, hash_of_version, palette_problem
from codec.registry import coder as registered_coder


def decode(data: bytes, *, model: Any = None, device: str = "cpu") -> Raster:
    """``.cllc`` bytes -> the original ``Raster`` (for a lossy file: the reconstruction it was
    made with), or a ``CallicError`` saying why not. ``model``: a loaded model of any codec, or a
    list or tuple of them, used where the file names it (by digest); other models are found by
    hash (``codec.mgcf.weights``)."""
    header, container = read_header(data)
    shown = _shown_facts(container, header.mode)  # checked before the (costly) pixels are decoded
    coder = registered_coder(header.coder)
    if calibration_scheme(container) and header.coder != CODER_MGCF:
        raise CorruptFileError(f"a CALB section in a {coder.name} file (only the learned coder calibrates)")
    if not coder.model and header.model_hash != bytes(32):
        raise CorruptFileError(f"a {coder.name} file that names a model")
    models = [m for m in (model if isinstance(model, (list, tuple)) else [model]) if m is not None]
    pixels = coder.decode_pixels(header, container, container.require(b"DATA"), models, device)
    if not isinstance(pixels, np.ndarray) or pixels.shape != header.shape or pixels.dtype != np.dtype(header.dtype):
        got = f"{pixels.shape} {pixels.dtype}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise CorruptFileError(f"the {coder.name} decoder gave {got}, the file says {header.shape} {header.dtype}")
    raster = Raster(pixels, header.mode, **shown)
    if hash_of_version(raster, container.version) != header.pixel_hash:
        raise VerificationError(
            "decoded image does not match the hash stored in the file"
            + (" (pixels, mode, palette, transparency and metadata)" if container.version >= 2 else "")
        )
    return raster


def _shown_facts(container: Container, mode: str) -> dict[str, Any]:
    """The palette, transparency and metadata a file holds, as ``Raster`` fields; ``CorruptFileError``
    for a palette or transparency no writer could use (a crafted file must not reach one)."""
    facts: dict[str, Any] = {}
    plte = container.get(b"PLTE")
    if plte is not None:
        n = plte[0] if plte else 0
        try:
            palette_mode = plte[1 : 1 + n].decode("ascii") if len(plte) > n else ""
        except UnicodeDecodeError:
            palette_mode = ""
        problem = palette_problem(mode, palette_mode, plte[1 + n :]) if palette_mode else "malformed section"
        if problem is not None:
            raise CorruptFileError(f"PLTE: {problem}")
        facts["palette_mode"], facts["palette"] = palette_mode, plte[1 + n :]
    facts["transparency"] = container.get(b"trns")
    decode_transparency(facts["transparency"])
    facts["icc_profile"] = container.get(b"iccp")
    facts["exif"] = container.get(b"exif")
    facts["xmp"] = container.get(b"xmp ")
    facts["png_chunks"] = container.get(b"pngc")
    split_chunks(facts["png_chunks"])  # CorruptFileError before decoding, not when writing
    return facts
