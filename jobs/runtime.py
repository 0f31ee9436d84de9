"""Process set-up shared by the commands that run models.

Threads: by default torch gets ``OMP_NUM_THREADS`` if set, else the cores this process really has
(``pipeline.cores.available_cores``: its CPU affinity, capped by a cgroup CPU quota), never the
machine's count; and OpenMP threads sleep instead of spinning while they wait
(``OMP_WAIT_POLICY=PASSIVE``, set in ``jobs/__init__.py`` before torch loads). Spinning is what
made a 64x64 decode 20-80x slower at 2 threads than at 1 while another process kept one of two
cores busy: each parallel region waited for a spinning thread that the scheduler had parked.
"""

from __future__ import annotations

import os

from codec.errors import CallicError
from pipeline.cores import available_cores


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set (by the user, or by Ray for an actor of that many CPUs), else
    the cores this process may use."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return available_cores()


def setup_torch(threads: int | None, device: str) -> None:
    """Fix torch's CPU thread count (files never depend on it; default: ``default_threads``) and
    check a requested GPU exists."""
    import torch

    torch.set_num_threads(threads or default_threads())
    if device == "cuda" and not torch.cuda.is_available():
        raise CallicError("--device cuda: no CUDA device is available")
