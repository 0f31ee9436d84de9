"""Reading a local file whose kind and size are not to be trusted: inputs, ``.cllc`` files, model
files and archive sources alike. A FIFO must not hang the reader, a device (``/dev/zero``) or a
file that keeps growing must not fill memory, and a loop of links is an answer, not a retry.

One function for all of them, so the same rule holds everywhere: regular files only (a link to
one is fine), at most ``limit`` bytes.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from codec.errors import CorruptFileError

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}
_CHUNK = 1 << 24


def read_regular_file(
    path: str | Path, limit: int, error: type[Exception] = CorruptFileError, name: str | None = None
) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes, else ``error``
    with a message starting with ``name`` (default: the path). Other ``OSError``s (missing file,
    refused access) pass through: the caller knows what to call them."""
    name = name or str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat below refuses it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{name}: a loop of symbolic links") from None
        if exc.errno in (errno.ENXIO, errno.ENODEV):
            raise error(f"{name}: not a regular file ({os.strerror(exc.errno)})") from None
        raise
    try:
        st = os.fstat(fd)  # the file opened, not a name that may have changed since
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{name}: not a regular file ({_KINDS.get(stat.S_IFMT(st.st_mode), 'special')})")
        if st.st_size > limit:
            raise error(f"{name}: {st.st_size} bytes, over the {limit}-byte limit")
        chunks, total = [], 0
        while chunk := os.read(fd, min(_CHUNK, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise error(f"{name}: grew past the {limit}-byte limit while read")
        return b"".join(chunks)
    finally:
        os.close(fd)
