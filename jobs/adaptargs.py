"""Command-line flags for per-image adaptation (``codec.rpft``), shared by ``encode`` and ``bench``.

Torch-free at import (the flags' defaults come from ``codec.defaults``): the CLI builds its parser
for ``--help`` from here, and torch is only imported when a configuration is made."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from codec.defaults import (
    DEFAULT_ADAPT_LR,
    DEFAULT_ADAPT_PATCHES,
    DEFAULT_LORA_RANK,
    DEFAULT_TUCKER_RANKS,
    MIN_ADAPT_PIXELS,
)
from codec.errors import CallicError

if TYPE_CHECKING:
    from codec.rpft import AdaptConfig


ADAPT_LAYERS = ("all", "last", "head")  # codec.rpft.LAYERS, without importing torch (a test keeps them equal)
ADAPT_LAYERS_HELP = (
    "what RPFT adapts: all (every block and the head, as the paper), last (the last block and the head; "
    "the frozen layers run once per patch, so a step costs about a third) or head"
)


class AdaptUsageError(CallicError):
    """Adaptation flags out of range (exit code 64, like any usage error)."""

    exit_code = 64


def adapt_config(
    args: argparse.Namespace, steps: int, order: str | None = None, layers: str | None = None
) -> AdaptConfig | None:
    """The per-image fine-tuning the flags ask for, with T = ``steps`` (None when it is 0)."""
    if steps == 0:
        return None
    from codec.adapters import AdapterSpec
    from codec.rpft import AdaptConfig

    try:
        return AdaptConfig(
            steps=steps,
            lr=args.lr,
            order=order or args.adapt_order,
            layers=layers or args.adapt_layers,
            max_patches=args.adapt_patches or None,
            spec=AdapterSpec(args.lora_rank, tuple(args.tucker_ranks)),
            min_pixels=args.adapt_min_pixels,
            stop_below=args.adapt_stop_below,
        )
    except ValueError as exc:
        raise AdaptUsageError(str(exc)) from exc


def add_adapt_arguments(p: argparse.ArgumentParser) -> None:
    """The adaptation flags ``encode`` and ``bench`` share (each defines its own ``--steps``,
    ``--adapt-order`` and ``--adapt-layers``: one value for encode, comma lists for bench)."""
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
