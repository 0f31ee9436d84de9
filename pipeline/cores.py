"""The cores this process really has: what thread counts and worker pools are sized by.

``os.cpu_count()`` (and Ray's own count) is the machine's: a process pinned to 2 of 64 cores, or
a container limited to 2 CPUs, that starts 64 threads runs them in turns and loses far more to
waiting than it gains.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a container's cpuset),
    capped by a cgroup CPU quota (``docker --cpus``, a Kubernetes CPU limit), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.floor(quota))
    return max(1, cores)


def cgroup_cpu_quota(root: Path = CGROUP) -> float | None:
    """CPUs' worth of time the cgroup may use (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or
    None when unlimited or unknown."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
    except OSError:
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        q, p = int(quota), int(period or 100000)
    except ValueError:  # "max": no quota
        return None
    return q / p if q > 0 and p > 0 else None
