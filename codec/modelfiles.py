"""The one model registry of every codec: where model files are found, how they are named and
written, which are shipped, and their digests, all from the files' bytes and torch-free.

A model file is named and found by the SHA-256 of its bytes (``<kind>-<first 16 hex
digits>.safetensors``; ``mgcf-`` for the learned lossless coder, ``cca-`` for the lossy codec), and
a ``.cllc`` names that hash. ``find_by_hash`` looks in ``$CALLIC_MODEL_PATH`` (folders separated
by ``os.pathsep``), then ``~/.cache/callic/models``, then the models shipped in the package, and
takes the first file whose full hash matches (a file of the right name but another hash is
skipped, with a warning); failing those, the sources added with ``add_source`` (a restored job's
own copies), checked the same way. The package ships two lists: ``DEFAULT`` names the learned coder's
default model, ``CCA`` the lossy rate points, lowest quality first.

Why torch-free: the archive driver and the bench's driver pin a job's models by hash before any
worker starts, and ``digest_of`` reads a file's bytes for that without parsing (loading) it; the
codecs' own loaders (``codec.mgcf.weights``, ``codec.cca.weights``) parse and check the tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from codec.errors import CallicError, CorruptFileError, ModelNotFoundError
from codec.files import read_regular_file

PACKAGE_MODELS = Path(__file__).parent / "models"
DEFAULT_MODEL_FILE = PACKAGE_MODELS / "DEFAULT"  # the learned coder's default model
QUALITY_LIST = PACKAGE_MODELS / "CCA"  # the lossy codec's shipped rate points, lowest quality first
MAX_MODEL_BYTES = 1 << 30  # the shipped models are 7 to 13 MB; the paper's CCA model ~150 MB
MAX_HEADER_BYTES = 100 << 20  # a safetensors header (JSON) read before any tensor
# A corpus-adapted learned model (``codec.mgcf.weights``): adapters over a base model it names by hash.
ADAPTED_FORMAT = "callic-mgcf-adapted"
log = logging.getLogger(__name__)


def model_dirs() -> list[Path]:
    env = [Path(p) for p in os.environ.get("CALLIC_MODEL_PATH", "").split(os.pathsep) if p]
    return [*env, Path.home() / ".cache" / "callic" / "models", PACKAGE_MODELS]


def read_model_bytes(path: str | Path) -> bytes:
    """A model file's bytes: ``ModelNotFoundError`` if there is none, ``CorruptFileError`` if it is
    not a regular file (``/dev/zero``) or is larger than ``MAX_MODEL_BYTES``."""
    try:
        return read_regular_file(path, MAX_MODEL_BYTES)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ModelNotFoundError(f"model file {path} does not exist") from exc


def mgcf_file_name(digest: bytes) -> str:
    """The learned coder's model file name for a SHA-256."""
    return f"mgcf-{digest.hex()[:16]}.safetensors"


def header_metadata(data: bytes) -> dict[str, str]:
    """A safetensors file's metadata, read from its JSON header only ({} where there is none):
    what kind of model a file is, before (and without) loading its tensors."""
    if len(data) < 8:
        return {}
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, MAX_HEADER_BYTES):
        return {}
    try:
        meta = json.loads(data[8 : 8 + n]).get("__metadata__")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def base_of(data: bytes) -> bytes | None:
    """The base model a corpus-adapted model file names (its SHA-256), None for any other file;
    ``CorruptFileError`` when the name is not a SHA-256."""
    meta = header_metadata(data)
    if meta.get("format") != ADAPTED_FORMAT:
        return None
    base = meta.get("base")
    if not isinstance(base, str) or len(base) != 64 or any(c not in "0123456789abcdef" for c in base):
        raise CorruptFileError(f"adapted model file names base {base!r}: not a SHA-256")
    return bytes.fromhex(base)


# The model files this process has hashed (``digest_of``) or found (``find_by_hash``), by digest:
# what a job copies into its folder at creation, read from the very file it pinned.
_HASHED: dict[bytes, Path] = {}
# Where a model that no folder of ``model_dirs()`` holds may still come from, tried in order after
# them: e.g. the folder of a job being restored (``pipeline.restore`` adds its job copies). Each
# takes a digest and gives (where, bytes) or None; the bytes are checked against the digest.
ModelSource = Callable[[bytes], "tuple[str, bytes] | None"]
_SOURCES: list[ModelSource] = []
_SOURCED: dict[bytes, bytes] = {}  # models found through a source, by digest (``bytes_of``)


def digest_of(path: str | Path) -> bytes:
    """The SHA-256 of a model file's bytes (what files name and jobs pin), without loading it."""
    digest = hashlib.sha256(read_model_bytes(path)).digest()
    _HASHED[digest] = Path(path)
    return digest


def bytes_of(digest: bytes) -> bytes:
    """The bytes of a model file this process hashed (``digest_of``) or found (``find_by_hash``),
    checked again against the digest (the file may have changed since): ``ModelNotFoundError`` if
    it did or none was."""
    path = _HASHED.get(digest)
    if path is not None:
        data = read_model_bytes(path)
        if hashlib.sha256(data).digest() == digest:
            return data
    if digest in _SOURCED:
        return _SOURCED[digest]
    raise ModelNotFoundError(f"model {digest.hex()[:16]}…: no file with that hash was read by this process")


def add_source(source: ModelSource) -> None:
    """Let ``find_by_hash`` fall back on ``source`` for models no folder holds."""
    if source not in _SOURCES:
        _SOURCES.append(source)


def write_named(data: bytes, directory: str | Path, name_of: Callable[[bytes], str]) -> Path:
    """Write a model file in ``directory`` (atomically) under the name its hash gives; return the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name_of(hashlib.sha256(data).digest())
    with tempfile.NamedTemporaryFile(dir=directory, delete=False, suffix=".tmp") as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
    return path


def find_by_hash(digest: bytes, name: str) -> tuple[Path, bytes]:
    """The first file called ``name`` in ``model_dirs()`` whose SHA-256 is ``digest``, and its
    bytes. Files of that name with another hash (a stale or decoy copy) are skipped and named in
    the ``ModelNotFoundError`` when none matches."""
    skipped = []
    for d in model_dirs():
        path = d / name
        if not path.exists():
            continue
        try:
            data = read_model_bytes(path)
        except (OSError, CallicError) as exc:
            skipped.append(f"{path} ({exc})")
            log.warning("skipped model file %s: %s", path, exc)
            continue
        actual = hashlib.sha256(data).hexdigest()
        if actual == digest.hex():
            _HASHED[digest] = path
            return path, data
        skipped.append(f"{path} (its hash is {actual})")
        log.warning("skipped model file %s: its SHA-256 is %s, the file needs %s", path, actual, digest.hex())
    for source in list(_SOURCES):
        found = source(digest)
        if found is None:
            continue
        where, data = found
        if hashlib.sha256(data).digest() == digest:
            _SOURCED[digest] = data
            return Path(where), data
        skipped.append(f"{where} (its hash is {hashlib.sha256(data).hexdigest()})")
        log.warning("skipped model copy %s: its SHA-256 is not %s", where, digest.hex())
    searched = ", ".join(str(d) for d in model_dirs())
    raise ModelNotFoundError(
        f"model {digest.hex()[:16]}… is not installed (looked in {searched}"
        + (f"; skipped {', '.join(skipped)}" if skipped else "")
        + f"); put {name} in one of those folders or in $CALLIC_MODEL_PATH"
    )


def default_model_path() -> Path:
    """The learned coder's shipped default model (``DEFAULT``)."""
    if not DEFAULT_MODEL_FILE.is_file():
        raise ModelNotFoundError("no default model is shipped with this installation")
    return PACKAGE_MODELS / DEFAULT_MODEL_FILE.read_text().strip()


def quality_levels() -> list[str]:
    """The shipped lossy rate points' file names (``CCA``), lowest quality (fewest bits) first."""
    if not QUALITY_LIST.is_file():
        return []
    return [line.strip() for line in QUALITY_LIST.read_text().splitlines() if line.strip()]


def lossy_model_path(quality: int | None = None) -> Path:
    """The shipped lossy rate point ``quality`` (1 = fewest bits; None: the highest);
    ``ValueError`` outside the shipped ones."""
    levels = quality_levels()
    if not levels:
        raise ModelNotFoundError("no lossy (cca) models are shipped with this installation; pass a model file")
    q = len(levels) if quality is None else quality
    if not 1 <= q <= len(levels):
        raise ValueError(f"--quality must be in 1..{len(levels)} (the shipped rate points)")
    return PACKAGE_MODELS / levels[q - 1]
