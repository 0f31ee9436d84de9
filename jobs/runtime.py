"""Process set-up shared by the commands that run models.

Threads: by default torch gets ``OMP_NUM_THREADS`` if set, else the cores this process really has
(``pipeline.cores.available_cores``: its CPU affinity, capped by a cgroup CPU quota), never the
machine's count; and OpenMP threads sleep instead of spinning while they wait
(``OMP_WAIT_POLICY=PASSIVE``, set in ``jobs/__init__.py`` before torch loads). Spinning is what
made a 64x64 decode 20-80x slower at 2 threads than at 1 while another process kept one of two
cores busy: each parallel region waited for a spinning thread that the scheduler had parked.

Images (``allow_large_images``): Pillow refuses images over twice ``PIL.Image.MAX_IMAGE_PIXELS``
(89 megapixels by default) as decompression bombs. That limit is a process's choice, so the
library (``codec.images``) leaves it alone and callic's commands and workers set it.

Memory (``keep_freed_memory``, what ``callic train`` does): glibc hands every freed block over
128 KB back to the kernel, so each training step page-faults its activations in again; keeping
them in the process made a step 1.1x (batch 4 of 64x64) to 1.6x (batch 4 of 128x128) faster on
1 thread (``bench/train_speed.py --malloc-cache``, whole runs alternated).
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


LARGE_IMAGE_PIXELS = 1 << 30  # Pillow refuses twice this: 2.1 gigapixels, far above the decode limit


def allow_large_images() -> None:
    """Let Pillow open photos up to ``2 * LARGE_IMAGE_PIXELS`` pixels (the decode limit,
    ``codec.header.MAX_PIXEL_BYTES``, is the bound that matters); bigger ones stay refused."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = LARGE_IMAGE_PIXELS


def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks for reuse (no ``mmap`` below 1 GiB, no trimming below 2 GiB),
    so a loop that frees and allocates the same large tensors every step stops page-faulting them
    in again. The process keeps its peak memory. False (and nothing changed) without glibc."""
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, (1 << 31) - 1))
