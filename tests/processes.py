"""The processes of a test's own Ray cluster, for the tests that kill one of them or stop a
cluster: a test on a shared machine (a developer's, with an archive job of theirs running, or a
second test run) must never touch another cluster's processes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def _processes() -> dict[int, tuple[int, bytes]]:
    """Every process now: pid -> (parent pid, command line)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text().splitlines()
            ppid = next(int(line.split()[1]) for line in status if line.startswith("PPid:"))
            found[int(proc.name)] = (ppid, (proc / "cmdline").read_bytes())
        except (OSError, StopIteration):  # gone meanwhile
            continue
    return found


def _descendants(roots: list[int], procs: dict[int, tuple[int, bytes]]) -> list[int]:
    """``roots`` and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def our_processes(prefix: bytes) -> list[int]:
    """PIDs of this process's descendants (the Ray cluster it started is its child) whose command
    line starts with ``prefix`` (Ray names an actor's process ``ray::<class>...``)."""
    procs = _processes()
    return [pid for pid in _descendants([os.getpid()], procs) if pid in procs and procs[pid][1].startswith(prefix)]


def _alive(pid: int) -> bool:
    """Running (a zombie has exited: only its parent's wait is missing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_cluster(marker: str, grace_s: float = 10.0) -> None:
    """Stop the Ray cluster whose processes name ``marker`` (its ``--temp-dir``) on their command
    line, and everything they started (the workers): what ``ray stop`` would do, but ``ray stop``
    kills every Ray process on the machine, a user's own jobs included."""
    procs = _processes()
    victims = _descendants([pid for pid, (_, cmd) in procs.items() if marker.encode() in cmd], procs)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.time() + grace_s
        while time.time() < deadline and any(_alive(pid) for pid in victims):
            time.sleep(0.1)
