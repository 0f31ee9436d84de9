"""The wavefront scan order of CALLIC section 2, and the causal masks that follow from it.

Inside a P x P patch, pixel (i, j) belongs to group ``g = 2*i + j``. Groups are coded in order,
so a patch takes 3P - 2 sequential steps however large the image is, and every pixel of one group
(in every patch) is coded in the same step.

A kernel offset (dr, dc) points at group ``g + 2*dr + dc``. The first layer may only look at
strictly earlier groups (``dc + 2*dr < 0``); later layers may also look at the current group
(``dc + 2*dr <= 0``), because their inputs at current-group positions already depend on earlier
groups only.
"""

from __future__ import annotations

import torch


def num_steps(height: int, width: int) -> int:
    """Steps needed to code the top-left ``height x width`` pixels of a patch."""
    return 2 * (height - 1) + (width - 1) + 1


def kernel_offsets(kernel: int, strict: bool) -> list[tuple[int, int]]:
    """Visible (dr, dc) offsets of a masked ``kernel x kernel`` window, in raster order."""
    r = kernel // 2
    return [
        (dr, dc)
        for dr in range(-r, r + 1)
        for dc in range(-r, r + 1)
        if (dc + 2 * dr < 0 if strict else dc + 2 * dr <= 0)
    ]


def kernel_mask(kernel: int, strict: bool) -> torch.Tensor:
    """Float mask of shape (kernel, kernel): 1 where an offset is visible."""
    mask = torch.zeros(kernel, kernel)
    r = kernel // 2
    for dr, dc in kernel_offsets(kernel, strict):
        mask[dr + r, dc + r] = 1.0
    return mask


def step_positions(patch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns (ascending row) of group ``step`` inside a ``patch x patch`` patch."""
    rows = torch.arange(max(0, (step - patch + 2) // 2), min(patch - 1, step // 2) + 1)
    cols = step - 2 * rows
    keep = (cols >= 0) & (cols < patch)
    return rows[keep], cols[keep]


def group_map(patch: int) -> torch.Tensor:
    """(patch, patch) tensor of group indices ``2*i + j``."""
    idx = torch.arange(patch)
    return 2 * idx[:, None] + idx[None, :]
