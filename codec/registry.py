"""Every coder a ``.cllc`` file can name and every codec a user can pick: one table of each.

They answer two questions, so there are two tables:

- A **coder** is what a file's HEAD names (its u8 id): how the DATA section turns back into
  pixels. ``codec.decode`` dispatches on it and ``codec.info`` names it. An id is forever: some
  file that some version wrote names it.
- A **codec** is what ``callic archive --codec`` (and the bench) pick: a policy for coding a batch
  of images with its settings and models, e.g. ``auto`` codes the learned file and the JPEG-XL file
  and keeps the smaller. Its files name coders; one codec may write several (``auto`` writes
  mgcf, jxl-lossless or zlib files).

Adding a codec is one folder (its coder's decoder, its ``Codec``) and one line here for each
table. Entries name their implementation as ``"module:attribute"`` and import it on first use,
so that reading a header (``callic info``, ``callic status``) never imports torch.

Codecs outside this package register themselves when imported: ``$CALLIC_CODECS`` names such
modules (comma-separated), imported on the first look-up in every process, Ray workers included.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from codec.errors import UnsupportedError

if TYPE_CHECKING:
    import numpy as np

    from codec.container import Container
    from codec.header import Header
    from codec.raster import Raster
    from codec.report import EncodeReport


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


# ---------------------------------------------------------------- coders (what files name)


class PixelDecoder(Protocol):
    def __call__(
        self, header: Header, container: Container, payload: bytes, models: Sequence[Any], device: str
    ) -> np.ndarray:
        """The pixels of a file whose HEAD (already checked) names this coder; ``models`` are the
        loaded models the caller has (any codec's): use the one whose digest the HEAD names, else
        find it by hash. Raises a ``CallicError`` rather than return other pixels."""
        ...


@dataclass(frozen=True)
class Coder:
    """One HEAD coder id. ``label`` is what manifests, status and reports call its files (the
    learned coder's files are ``callic`` there, ``mgcf`` in ``info``); ``model``: the HEAD's model
    hash names a model file (else it must be zeros); ``lossy``: its files hold a reconstruction,
    measured in bits per pixel, not the source's pixels."""

    id: int
    name: str
    modes: tuple[str, ...]
    decoder: str  # "module:function", a PixelDecoder
    label: str = ""
    model: bool = False
    lossy: bool = False

    @property
    def shown_name(self) -> str:
        return self.label or self.name

    def decode_pixels(
        self, header: Header, container: Container, payload: bytes, models: Sequence[Any], device: str
    ) -> np.ndarray:
        decoder: PixelDecoder = _resolve(self.decoder)
        return decoder(header, container, payload, models, device)


# ---------------------------------------------------------------- codecs (what users pick)


class Encoder(Protocol):
    """A codec opened with its settings on a device: models loaded once, then many batches."""

    def encode_many(self, rasters: list[Raster], *, verify: bool) -> list[tuple[bytes, EncodeReport]]:
        """One ``.cllc`` and its report per image, in order; ``verify`` decodes each kept file and
        compares before returning. Raises for the batch; callers retry one image at a time."""
        ...

    def fingerprint(self) -> dict[str, str]:
        """What a job pins so that ``resume`` codes with the same models: a name per model it
        codes with -> the SHA-256 (hex) of the model file."""
        ...

    def decode(self, data: bytes) -> Raster:
        """``codec.decode`` with the models this encoder holds (a file that names another model
        finds it by hash as usual)."""
        ...


class Codec(Protocol):
    name: str
    settings_type: type  # a frozen ``codec.settings.Settings`` dataclass

    def open(self, settings: Any, device: str, lazy: bool = False) -> Encoder:
        """Its encoder with ``settings``, models loaded now (a job's workers: a missing or
        wrong model fails as they start), or with ``lazy`` when first needed (``callic
        encode`` of images that never need one)."""
        ...


@dataclass(frozen=True)
class CodecEntry:
    name: str
    target: str  # "module:attribute", a Codec
    help: str = ""
    lossy: bool = False  # its files may hold other pixels than the source's (the lossless bench skips it)

    def load(self) -> Codec:
        return _resolve(self.target)


# ---------------------------------------------------------------- the tables

_CODERS: dict[int, Coder] = {}
_CODECS: dict[str, CodecEntry] = {}
_plugins_loaded = False


def register_coder(coder: Coder) -> None:
    """Add a coder; an id or name that is taken by another coder is refused (ids are forever)."""
    for other in _CODERS.values():
        if (other.id == coder.id or other.name == coder.name) and other != coder:
            raise ValueError(f"coder {coder.name} (id {coder.id}) clashes with {other.name} (id {other.id})")
    if not 1 <= coder.id <= 255:
        raise ValueError(f"a coder id is one byte, 1..255, not {coder.id}")
    _CODERS[coder.id] = coder


def register_codec(entry: CodecEntry) -> None:
    other = _CODECS.get(entry.name)
    if other is not None and other != entry:
        raise ValueError(f"codec {entry.name} is registered already ({other.target})")
    _CODECS[entry.name] = entry


def _load_plugins() -> None:
    """Import the modules ``$CALLIC_CODECS`` names, once per process (they register themselves)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for name in filter(None, (n.strip() for n in os.environ.get("CALLIC_CODECS", "").split(","))):
        importlib.import_module(name)


def coders() -> list[Coder]:
    _load_plugins()
    return [_CODERS[i] for i in sorted(_CODERS)]


def find_coder(coder_id: int) -> Coder | None:
    _load_plugins()
    return _CODERS.get(coder_id)


def coder(coder_id: int) -> Coder:
    found = find_coder(coder_id)
    if found is None:
        raise UnsupportedError(f"unknown coder id {coder_id}")
    return found


def coder_named(name: str) -> Coder:
    """A coder by its ``name`` or ``label`` (``mgcf`` and ``callic`` are the same coder)."""
    for c in coders():
        if name in (c.name, c.label):
            return c
    raise UnsupportedError(f"no coder is called {name!r}")


def lossy_labels() -> frozenset[str]:
    """What manifests call the files of lossy coders (their rows are measured in bpp)."""
    return frozenset(c.shown_name for c in coders() if c.lossy)


def codec_entries() -> list[CodecEntry]:
    """Every codec, in registration order (the first is the default)."""
    _load_plugins()
    return list(_CODECS.values())


def codec_names() -> list[str]:
    return [e.name for e in codec_entries()]


def codec_entry(name: str) -> CodecEntry:
    _load_plugins()
    entry = _CODECS.get(name)
    if entry is None:
        raise UnsupportedError(f"codec {name!r} is not available (choose from {', '.join(_CODECS)})")
    return entry


def codec(name: str) -> Codec:
    return codec_entry(name).load()


# The coders and codecs of this package. Coder ids 1-4 are in files already: never reuse one.
_RGB = ("RGB",)
register_coder(Coder(1, "mgcf", ("RGB", "RGBA"), "codec.mgcf.coder:decode_mgcf", label="callic", model=True))
register_coder(Coder(2, "jxl-lossless", (), "codec.fallback:decode_jxl_file"))  # () = every mode
register_coder(Coder(3, "zlib", (), "codec.fallback:decode_zlib_file"))
register_coder(Coder(4, "cca", _RGB, "codec.cca.api:decode_cca", model=True, lossy=True))
register_codec(CodecEntry("auto", "codec.lossless:AUTO", "the learned file or JPEG-XL's, whichever is smaller"))
register_codec(CodecEntry("callic", "codec.lossless:LEARNED", "the learned coder for every 8-bit RGB(A) image"))
register_codec(CodecEntry("cca", "codec.cca.codec:CCA", "lossy CCA for 8-bit RGB, the rest as auto", lossy=True))
