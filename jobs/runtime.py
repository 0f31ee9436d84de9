"""Process set-up shared by the commands that run models."""

from __future__ import annotations

from codec.errors import CallicError


def setup_torch(threads: int | None, device: str) -> None:
    """Fix torch's CPU thread count (files never depend on it) and check a requested GPU exists."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise CallicError("--device cuda: no CUDA device is available")
