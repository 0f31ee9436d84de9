"""Command-line flags of the learned coder (``codec.lossless.LosslessSettings``): the adaptation
flags ``encode``, ``archive`` and ``bench`` share, and the one-value coding flags of ``encode`` and
``archive``. Every default comes from ``codec.defaults``, once.

Torch-free at import: the CLI builds its parser for ``--help`` from here, and torch is only
imported when a configuration is made."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from codec.defaults import (
    CALIBRATION_SCHEMES,
    DEFAULT_ADAPT_LR,
    DEFAULT_ADAPT_PATCHES,
    DEFAULT_CALIBRATION,
    DEFAULT_JXL_EFFORT,
    DEFAULT_LORA_RANK,
    DEFAULT_PATCHES_PER_STREAM,
    DEFAULT_STEPS,
    DEFAULT_TUCKER_RANKS,
    JXL_EFFORTS,
    MIN_ADAPT_PIXELS,
)
from codec.errors import CallicError
from codec.lossless import LosslessSettings

if TYPE_CHECKING:
    from codec.mgcf.rpft import AdaptConfig


ADAPT_ORDERS = ("rate", "random", "all")  # codec.mgcf.rpft.ORDERS, without importing torch (a test keeps them equal)
ADAPT_LAYERS = ("all", "last", "head")  # codec.mgcf.rpft.LAYERS, without importing torch (a test keeps them equal)
ADAPT_LAYERS_HELP = (
    "what RPFT adapts: all (every block and the head, as the paper), last (the last block and the head; "
    "the frozen layers run once per patch, so a step costs about a third) or head"
)


class AdaptUsageError(CallicError):
    """Coding or adaptation flags out of range (exit code 64, like any usage error)."""

    exit_code = 64


def adapt_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ``LosslessSettings`` fields of the shared adaptation flags (``add_adapt_arguments``)."""
    return {
        "lr": args.lr,
        "adapt_patches": args.adapt_patches,
        "adapt_min_pixels": args.adapt_min_pixels,
        "adapt_stop_below": args.adapt_stop_below,
        "lora_rank": args.lora_rank,
        "tucker_ranks": tuple(args.tucker_ranks),
    }


def coding_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Every ``LosslessSettings`` field but the model, from ``add_coding_arguments``' flags (with
    the adaptation ones), checked: a value out of range is a usage error before any work."""
    fields = adapt_fields(args) | {
        "steps": args.steps,
        "adapt_order": args.adapt_order,
        "adapt_layers": args.adapt_layers,
        "calibration": args.calibration,
        "patches_per_stream": args.patches_per_stream,
        "jxl_effort": args.jxl_effort,
    }
    try:
        LosslessSettings(**fields).check()
    except ValueError as exc:
        raise AdaptUsageError(str(exc)) from exc
    return fields


def adapt_config(
    args: argparse.Namespace, steps: int, order: str | None = None, layers: str | None = None
) -> AdaptConfig | None:
    """The per-image fine-tuning the flags ask for, with T = ``steps`` (None when it is 0): what
    ``LosslessSettings.adapt_config`` makes of them (``bench`` gives each variant's steps, order
    and layers)."""
    order, layers = order or args.adapt_order, layers or args.adapt_layers
    try:
        settings = LosslessSettings(steps=steps, adapt_order=order, adapt_layers=layers, **adapt_fields(args))
        return settings.adapt_config()
    except ValueError as exc:
        raise AdaptUsageError(str(exc)) from exc


def add_coding_arguments(p: argparse.ArgumentParser, effort_help: str) -> None:
    """The learned coder's one-value flags, ``encode``'s and ``archive``'s alike, and the
    adaptation flags (``bench`` takes comma lists of steps, orders, layers and schemes instead)."""
    p.add_argument(
        "--jxl-effort", type=int, choices=JXL_EFFORTS, default=DEFAULT_JXL_EFFORT, metavar="E", help=effort_help
    )
    p.add_argument(
        "--patches-per-stream",
        type=int,
        default=None,
        help="patches per independently coded stream (bounds the decoder's memory; default "
        f"{DEFAULT_PATCHES_PER_STREAM} for 64x64 patches, fewer for bigger patches: the same pixels per stream)",
    )
    p.add_argument(
        "--calibration",
        type=int,
        choices=CALIBRATION_SCHEMES,
        default=DEFAULT_CALIBRATION,
        help="learned coder: correct the model's predictions from the pixels already coded (scheme 1, "
        f"no side information; 0: off, as files before it). Default {DEFAULT_CALIBRATION}",
    )
    steps_help = f"fine-tuning steps T (0: none; default {DEFAULT_STEPS}); images under {MIN_ADAPT_PIXELS} pixels"
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"{steps_help} are never adapted")
    p.add_argument("--adapt-order", choices=ADAPT_ORDERS, default="rate", help="patch order (rate = RPFT)")
    p.add_argument("--adapt-layers", choices=ADAPT_LAYERS, default="all", help=ADAPT_LAYERS_HELP)
    add_adapt_arguments(p)


def add_adapt_arguments(p: argparse.ArgumentParser) -> None:
    """The adaptation flags ``encode``, ``archive`` and ``bench`` share (``--steps``,
    ``--adapt-order`` and ``--adapt-layers`` are one value for the first two,
    ``add_coding_arguments``, and comma lists for bench)."""
    p.add_argument("--lr", type=float, default=DEFAULT_ADAPT_LR, help="Adam learning rate of the adapters")
    p.add_argument(
        "--adapt-patches",
        type=int,
        default=DEFAULT_ADAPT_PATCHES,
        help="most patches an image trains on per step (0: all, as in the paper; "
        f"default {DEFAULT_ADAPT_PATCHES}): the speed knob for large images",
    )
    p.add_argument(
        "--adapt-min-pixels",
        type=int,
        default=MIN_ADAPT_PIXELS,
        metavar="N",
        help=f"images with fewer pixels (height x width) are not adapted (default {MIN_ADAPT_PIXELS}, where "
        "adapters stop paying for their bits; 0: adapt every image)",
    )
    p.add_argument(
        "--adapt-stop-below",
        type=float,
        default=0.0,
        metavar="F",
        help="stop fine-tuning early once the estimated gain grows by less than this share of the image's bits "
        "in 3 steps (--steps is then a budget; default 0: run every step)",
    )
    p.add_argument("--lora-rank", type=int, default=DEFAULT_LORA_RANK)
    p.add_argument("--tucker-ranks", type=int, nargs=3, default=list(DEFAULT_TUCKER_RANKS), metavar=("R1", "R2", "R3"))
