"""Training crops and validation tiles, per source group.

A training folder mixes sources of very different sizes (three 7-megapixel BBC photographs, a few
dozen downscaled wallpapers, small cut-out stamps), so images are grouped by source and every
group is sampled and validated on its own terms:

- **Groups.** An image's group is the ``group`` its folder's ``manifest.json`` records for it (as
  ``callic data`` writes: ``bbc``, ``mate``, ``plasma``, ``lomiri``, ``tuxpaint``, ``skimage``,
  ``jxl``). An image the manifest does not list, or in a folder without one, takes the part of its
  file name before the first ``-`` (``bbc-trees-1x.png`` -> ``bbc``), or ``other`` if the name has
  none. Names are lower-cased and cut to ``[a-z0-9_]``, since they become log columns.
- **The crop mix.** A crop draws a group with probability proportional to the square root of the
  group's pixel count, then an image of that group uniformly, then a uniform position, and each
  flip with probability 1/2. Uniform over images (the old rule) gave a group as many crops as it
  has images, whatever their size; by pixels, the BBC photographs would take most crops; the
  square root sees every source, large ones more but not in proportion. The crops of step ``s``
  on worker ``r`` are a pure function of (seed, r, s, the images): resuming needs no RNG state.
- **Validation.** ``val_tiles // groups`` (at least 1) fixed non-overlapping tiles per group,
  spread evenly over all tile positions of that group's images, at the model's crop size; the
  objective reports the mean over all tiles and one value per group.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import fsspec
import numpy as np
import torch

from codec.errors import CallicError
from codec.images import read_image
from jobs.imagefiles import list_images, read_file

OTHER = "other"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # callic data's largest is a few KB; a huge one is not ours
Groups = Mapping[str, Sequence[np.ndarray]]


class Tiles(NamedTuple):
    """Validation tiles, (n, 3, size, size) uint8, and the group of each."""

    pixels: torch.Tensor
    groups: tuple[str, ...]


def clean_group(name: str) -> str:
    """A group name fit for a log column: lower case, ``[a-z0-9_]``, at most 32 characters."""
    cleaned = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")[:32]
    return cleaned or OTHER


def group_from_name(file: str) -> str:
    """The group of an image no manifest names: its file name's part before the first ``-``."""
    prefix, dash, _ = file.rsplit("/", 1)[-1].partition("-")
    return clean_group(prefix) if dash and prefix else OTHER


def recorded_groups(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, str]:
    """File name -> group, from ``folder``'s manifest.json if it has one in callic data's form.

    A manifest.json that is not ours (not a JSON object with an ``images`` list) is ignored, as
    another tool may keep one there; one too large to be ours is refused before it is read."""
    path = f"{folder.rstrip('/')}/{MANIFEST}"
    if not fs.isfile(path):
        return {}
    size = fs.size(path)
    if size is None or size > MAX_MANIFEST_BYTES:
        raise CallicError(f"{path}: {size} bytes is too large for an image set's manifest")
    try:
        images = json.loads(read_file(fs, path)).get("images")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return {}
    if not isinstance(images, list):
        return {}
    return {
        e["file"]: clean_group(e["group"])
        for e in images
        if isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("group"), str)
    }


def load_rgb_images(url: str, min_side: int, options: dict | None = None) -> dict[str, list[np.ndarray]]:
    """Every 8-bit RGB(A) image under ``url`` (``options``: its storage options) at least
    ``min_side`` on each side, as RGB arrays, by group (see the module docstring); groups sorted
    by name, images in file order."""
    fs, paths = list_images(url, options=options)
    manifests: dict[str, dict[str, str]] = {}
    groups: dict[str, list[np.ndarray]] = {}
    for path in paths:
        folder, _, file = path.rpartition("/")
        if folder not in manifests:
            manifests[folder] = recorded_groups(fs, folder)
        raster = read_image(read_file(fs, path))
        if raster.pixels.dtype == np.uint8 and raster.mode in ("RGB", "RGBA"):
            px = raster.pixels[..., :3]
            if min(px.shape[:2]) >= min_side:
                group = manifests[folder].get(file) or group_from_name(file)
                groups.setdefault(group, []).append(np.ascontiguousarray(px))
    if not groups:
        raise CallicError(f"no 8-bit RGB images of at least {min_side}x{min_side} under {url}")
    return {g: groups[g] for g in sorted(groups)}


def as_groups(images: Groups | Sequence[np.ndarray]) -> dict[str, Sequence[np.ndarray]]:
    """Groups sorted by name; a plain list of images is one group."""
    if isinstance(images, Mapping):
        return {g: images[g] for g in sorted(images) if len(images[g])}
    return {OTHER: images}


def group_weights(images: Groups) -> dict[str, int]:
    """Each group's crop weight: the integer square root of its pixel count (exact on any machine)."""
    return {g: math.isqrt(sum(img.shape[0] * img.shape[1] for img in members)) for g, members in images.items()}


def mix_of_pixels(pixels: Mapping[str, int]) -> dict[str, float]:
    """The share of training crops each group gets, from each group's pixel count."""
    weights = {g: math.isqrt(p) for g, p in pixels.items()}
    total = sum(weights.values())
    return {g: w / total for g, w in weights.items()}


def crop_mix(images: Groups) -> dict[str, float]:
    """The share of training crops each group gets."""
    groups = as_groups(images)
    return mix_of_pixels({g: sum(img.shape[0] * img.shape[1] for img in members) for g, members in groups.items()})


def step_crops(
    images: Groups | Sequence[np.ndarray], n: int, size: int, seed: int, rank: int, step: int
) -> torch.Tensor:
    """The (n, 3, size, size) uint8 batch of worker ``rank`` at ``step``: a pure function of its
    arguments. Draws a group (by ``group_weights``), an image in it, a position and two flips."""
    groups = as_groups(images)
    names = list(groups)
    bounds = list(np.cumsum([group_weights(groups)[g] for g in names]).tolist())
    g = torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_003 + step)
    draws = torch.randint(0, 1 << 30, (n, 6), generator=g).tolist()
    crops = []
    for which, pick, yr, xr, fx, fy in draws:
        members = groups[names[bisect.bisect_right(bounds, which % bounds[-1])]]
        img = members[pick % len(members)]
        y, x = yr % (img.shape[0] - size + 1), xr % (img.shape[1] - size + 1)
        c = img[y : y + size, x : x + size]
        if fx & 1:
            c = c[:, ::-1]
        if fy & 1:
            c = c[::-1]
        crops.append(np.ascontiguousarray(c))
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)


def _spread_tiles(images: Sequence[np.ndarray], count: int, size: int) -> list[np.ndarray]:
    """``count`` non-overlapping tiles spread evenly over all tile positions of ``images``."""
    positions = [
        (i, y, x)
        for i, img in enumerate(images)
        for y in range(0, img.shape[0] - size + 1, size)
        for x in range(0, img.shape[1] - size + 1, size)
    ]
    picks = np.linspace(0, len(positions) - 1, min(count, len(positions))).round().astype(int)
    return [images[i][y : y + size, x : x + size] for i, y, x in (positions[k] for k in picks)]


def validation_tiles(images: Groups | Sequence[np.ndarray], count: int, size: int) -> Tiles:
    """``count // groups`` (at least 1) tiles per group, each group's spread evenly over its images."""
    groups = as_groups(images)
    per_group = max(1, count // len(groups))
    tiles, labels = [], []
    for name, members in groups.items():
        chosen = _spread_tiles(members, per_group, size)
        tiles += chosen
        labels += [name] * len(chosen)
    return Tiles(torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous(), tuple(labels))


def metric_name(metric: str, group: str) -> str:
    """The log column of ``metric`` on one group's tiles (``val_bpsp`` -> ``val_bpsp_bbc``); on
    all tiles (group ``""``) the metric itself."""
    return f"{metric}_{group}" if group else metric


def val_columns(metrics: Sequence[str], groups: Sequence[str]) -> tuple[str, ...]:
    """The validation columns of a log: each metric over all tiles, then per group, groups sorted."""
    return (*metrics, *(metric_name(m, g) for g in sorted(set(groups)) for m in metrics))


def sums_by_group(per_tile: Mapping[str, torch.Tensor], groups: Sequence[str] | None) -> dict[str, dict[str, float]]:
    """Sums of per-tile quantities over all tiles (key ``""``) and over each group's tiles (by name)."""
    totals = {"": {k: float(v.double().sum()) for k, v in per_tile.items()}}
    for name in sorted(set(groups or ())):
        mask = torch.tensor([g == name for g in groups])
        totals[name] = {k: float(v.double()[mask].sum()) for k, v in per_tile.items()}
    return totals
