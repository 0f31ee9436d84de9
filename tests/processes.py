"""The processes of this test's own Ray cluster, by name, for the tests that kill one: a test on
a shared machine (a developer's, with a job of theirs running) must never touch another
cluster's processes."""

from __future__ import annotations

import os
from pathlib import Path


def _parent(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return 0


def ours(pid: int) -> bool:
    """Whether ``pid`` descends from this process (the Ray cluster it started is its child)."""
    while pid > 1:
        pid = _parent(pid)
        if pid == os.getpid():
            return True
    return False


def our_processes(prefix: bytes) -> list[int]:
    """PIDs of this process's descendants whose command line starts with ``prefix`` (Ray names
    an actor's process ``ray::<class>...``)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(prefix) and ours(int(proc.name)):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return found
