"""Package archives from public registries (PyPI wheels, Debian .debs), pinned by SHA-256.

The photographs we train and evaluate on ship inside packages, so a dataset is "these members of
these archives". Archives are fetched by URL rather than through pip or apt: a wheel or .deb is just
a zip or an ar file here, never installed, and a pinned URL plus hash gives the same bytes on any
machine (a Debian pool or PyPI file URL does not change once published). ``CALLIC_DEBIAN_MIRROR`` and
``CALLIC_PYPI_FILES`` point them at a mirror.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from debian.arfile import ArError
from debian.debfile import DebError, DebFile
from tqdm import tqdm

from codec.errors import CallicError

DEBIAN = "http://deb.debian.org/debian/"
PYPI_FILES = "https://files.pythonhosted.org/packages/"
MAX_MEMBER_BYTES = 256 << 20  # no photo we use is larger; a bigger member means a wrong archive
# A .deb is read with python-debian (Debian's own reader of the ar container and every data.tar
# compression), not a reader of our own.


class DataError(CallicError):
    """A dataset cannot be prepared (registry unreachable, wrong bytes, missing member)."""


@dataclass(frozen=True)
class Archive:
    """One registry file: ``base`` is "debian" or "pypi", ``path`` is relative to that base."""

    name: str
    base: str
    path: str
    sha256: str
    licence: str

    @property
    def url(self) -> str:
        if self.base == "debian":
            return os.environ.get("CALLIC_DEBIAN_MIRROR", DEBIAN).rstrip("/") + "/" + self.path
        if self.base == "pypi":
            return os.environ.get("CALLIC_PYPI_FILES", PYPI_FILES).rstrip("/") + "/" + self.path
        if self.base == "url":
            return self.path
        raise ValueError(f"unknown archive base {self.base!r}")

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(archive: Archive, cache: Path, quiet: bool = False) -> Path:
    """Return the archive's local path, downloading it once; the hash is checked either way.
    ``quiet``: no progress bar."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / archive.filename
    if path.exists() and _sha256_file(path) == archive.sha256:
        return path
    tmp = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(archive.url, timeout=60) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=archive.filename, leave=False, disable=quiet)
            with bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"cannot download {archive.name} from {archive.url}: {e}. The registry may be unreachable from this "
            f"machine: download the file by hand into {cache}/ (the SHA-256 is checked), or set "
            f"CALLIC_DEBIAN_MIRROR / CALLIC_PYPI_FILES to a mirror."
        ) from e
    digest = _sha256_file(tmp)
    if digest != archive.sha256:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{archive.url} has SHA-256 {digest}, expected {archive.sha256}: not the pinned file")
    os.replace(tmp, path)
    return path


def read_members(path: Path, names: list[str]) -> dict[str, bytes]:
    """The named files of a wheel (zip) or .deb (ar + data.tar.*), as bytes; all must exist."""
    wanted, found = set(names), {}
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.filename in wanted:
                    if info.file_size > MAX_MEMBER_BYTES:
                        raise DataError(f"{info.filename} in {path.name} is {info.file_size} bytes: too large")
                    found[info.filename] = z.read(info)
    elif path.suffix == ".deb":
        try:  # python-debian: the ar container and its data.tar.{gz,bz2,xz,zst}, as Debian reads them
            t = DebFile(str(path)).data.tgz()
            for member in t:
                name = member.name.removeprefix("./")
                if name in wanted and member.isfile():
                    if member.size > MAX_MEMBER_BYTES:
                        raise DataError(f"{name} in {path.name} is {member.size} bytes: too large")
                    found[name] = t.extractfile(member).read()
        except (ArError, DebError, tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, ValueError, OSError) as e:
            raise DataError(f"corrupt .deb {path.name}: {type(e).__name__}: {e}") from e
    else:
        raise DataError(f"unknown archive type: {path.name}")
    missing = wanted - found.keys()
    if missing:
        raise DataError(f"{path.name} lacks {sorted(missing)}")
    return found
