"""``encode_lossy``: an 8-bit RGB image -> a ``.cllc`` holding CCA-coded latents; ``codec.decode``
reads such files like any other (the HEAD names the coder and the model's hash).

The file stores the hash (``codec.raster.raster_hash``) of the reconstruction the encoder computed
with the exact decoder path (``codec.cca.exact``); a decoder that gets other pixels (a corrupt
stream, a wrong model, or a platform where the exact path were not exact) raises instead of
returning them.

Models: ``quality`` q = 1..N picks the q-th of the shipped rate points (``codec/models/CCA`` lists
their files, lowest quality first); ``model`` names a file. Decoders find a file's model by hash
in the same folders as MGCF's (``$CALLIC_MODEL_PATH``, ``~/.cache/callic/models``, the package).
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codec.cca import coding
from codec.cca.weights import file_name, load_model_file, parse_model
from codec.container import HEAD, Container
from codec.errors import CorruptFileError, UnsupportedError, VerificationError
from codec.fileformat import as_raster, check_encodable
from codec.header import CODER_CCA, Header
from codec.modelfiles import find_by_hash, lossy_model_path
from codec.raster import Raster, raster_hash
from codec.reading import decode


def load_lossy_model(model: str | Path | None = None, quality: int | None = None, device: str = "cpu"):
    """A CCA model from a file, or the shipped rate point ``quality`` (1 = fewest bits;
    ``ValueError`` outside the shipped ones)."""
    path = model if model is not None else lossy_model_path(quality)
    return coding.LossyModel(load_model_file(path), torch.device(device))


@lru_cache(maxsize=8)
def lossy_model_by_hash(digest: bytes, device: str) -> coding.LossyModel:
    """The lossy model a file names: the first installed copy with its hash (decoys are skipped)."""
    path, data = find_by_hash(digest, file_name(digest))
    return coding.LossyModel(parse_model(data, source=str(path)), torch.device(device))


def encode_lossy(
    image: Any,
    *,
    quality: int | None = None,
    model: coding.LossyModel | None = None,
    device: str = "cpu",
    verify: bool = False,
    timings: dict | None = None,
) -> bytes:
    """Compress an 8-bit RGB image (numpy array, ``Raster`` or Pillow image) with the lossy codec."""
    kwargs = {"quality": quality, "model": model, "device": device, "verify": verify, "timings": timings}
    return encode_lossy_with_reconstruction(image, **kwargs)[0]


def encode_lossy_with_reconstruction(
    image: Any,
    *,
    quality: int | None = None,
    model: coding.LossyModel | None = None,
    device: str = "cpu",
    verify: bool = False,
    timings: dict | None = None,
) -> tuple[bytes, np.ndarray]:
    """``encode_lossy``, and the pixels the file decodes to (the encoder has them: ``callic
    encode`` reports their PSNR without decoding)."""
    raster = as_raster(image)
    if raster.pixels.dtype != np.uint8 or raster.mode != "RGB":
        raise UnsupportedError(f"the lossy codec takes 8-bit RGB images, not {raster.mode} {raster.pixels.dtype}")
    check_encodable(raster)  # e.g. over the decode limit
    model = model or load_lossy_model(quality=quality, device=device)
    start = time.perf_counter()
    data, recon = coding.encode(model, raster.pixels)
    if timings is not None:
        timings["encode_s"] = time.perf_counter() - start
    shown = Raster(recon, "RGB", icc_profile=raster.icc_profile, exif=raster.exif, xmp=raster.xmp)  # what decodes
    header = Header(CODER_CCA, raster.height, raster.width, 3, "uint8", "RGB", raster_hash(shown), model.digest, 0, 0)
    container = Container()
    container.add(HEAD, header.to_bytes())
    for tag, value in ((b"iccp", raster.icc_profile), (b"exif", raster.exif), (b"xmp ", raster.xmp)):
        if value:
            container.add(tag, value)
    container.add(b"DATA", data)
    out = container.to_bytes()
    if verify:
        start = time.perf_counter()
        cpu = model if model.device.type == "cpu" else coding.LossyModel(model.file, torch.device("cpu"))
        if not np.array_equal(decode(out, model=cpu).pixels, recon):
            raise VerificationError("the lossy file does not decode to the reconstruction it was made with")
        if timings is not None:
            timings["verify_s"] = time.perf_counter() - start
    return out, recon


def decode_cca(header, container, payload: bytes, models, device: str) -> np.ndarray:
    """The lossy coder's reconstruction (``codec.registry.PixelDecoder``), with the loaded lossy
    model the file names if the caller has it, else the installed one of that hash."""
    if header.dtype != "uint8" or header.channels != 3:
        raise CorruptFileError("cca coder with a non 8-bit RGB header")
    model = next((m for m in models if isinstance(m, coding.LossyModel) and m.digest == header.model_hash), None)
    if model is None:
        model = lossy_model_by_hash(header.model_hash, device)
    return coding.decode(model, payload, header.height, header.width)
