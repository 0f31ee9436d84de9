"""Whole-file writes for every command's outputs: atomic, and with the permissions users expect.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, so a restored PNG or a
benchmark report used to be unreadable by anyone else. Outputs get ``0o666 & ~umask`` instead,
what ``cp``, ``cjxl`` or a shell redirection would give (0644 under the usual umask 022).
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile
from pathlib import Path


@functools.cache
def current_umask() -> int:
    """The process's umask, read once (a CLI does not change it while running).

    Linux shows it in /proc/self/status without touching it. Elsewhere ``os.umask`` is the only
    reader, and it must set a value to return the old one: it is set to 0o077 for that instant (a
    file another thread creates meanwhile is at worst more private) and restored at once.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


def output_mode() -> int:
    """Permission bits of a new output file: what ``open(path, "w")`` would give."""
    return 0o666 & ~current_umask()


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write via a temporary file and a rename: a full disk or a kill never leaves half a file.

    The file ends with ``output_mode()``; a missing folder is reported as such (an ``OSError``
    naming the folder, not the hidden temporary name that could not be created in it)."""
    path = Path(path)
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".part")
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"output folder {folder} does not exist") from None
    except NotADirectoryError:
        raise NotADirectoryError(errno.ENOTDIR, f"output folder {folder} is not a folder") from None
    except PermissionError:
        raise PermissionError(errno.EACCES, f"output folder {folder} is not writable") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), output_mode())
            f.write(data)
        try:
            os.replace(tmp, path)
        except IsADirectoryError:
            raise IsADirectoryError(errno.EISDIR, f"{path} is a folder") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
