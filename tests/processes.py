"""The processes of a test's own Ray cluster, for the tests that kill one of them or stop a
cluster: a test on a shared machine (a developer's, with an archive job of theirs running, or a
second test run) must never touch another cluster's processes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
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


def _alive(pid: int) -> bool:
    """Running (a zombie has exited: only its parent's wait is missing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                tree.setdefault(_parent(int(proc.name)), []).append(int(proc.name))
            except OSError:
                continue
    return tree


def stop_cluster(marker: str, grace_s: float = 10.0) -> None:
    """Stop the Ray cluster whose processes name ``marker`` (its ``--temp-dir``) on their command
    line, and everything they started (the workers): what ``ray stop`` would do, but ``ray stop``
    kills every Ray process on the machine, a user's own jobs included."""
    roots = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                roots.append(int(proc.name))
        except OSError:
            continue
    tree, victims = _children(), []
    while roots:
        pid = roots.pop()
        victims.append(pid)
        roots += tree.get(pid, [])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.time() + grace_s
        while time.time() < deadline and any(_alive(pid) for pid in victims):
            time.sleep(0.1)
