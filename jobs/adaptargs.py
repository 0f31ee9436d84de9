"""Command-line flags for per-image adaptation (``codec.rpft``), shared by ``encode`` and ``bench``."""

from __future__ import annotations

import argparse

from codec.adapters import AdapterSpec
from codec.errors import CallicError
from codec.rpft import AdaptConfig

DEFAULT_ADAPT_PATCHES = 32


class AdaptUsageError(CallicError):
    """Adaptation flags out of range (exit code 64, like any usage error)."""

    exit_code = 64


def adapt_config(args: argparse.Namespace, steps: int, order: str | None = None) -> AdaptConfig | None:
    """The per-image fine-tuning the flags ask for, with T = ``steps`` (None when it is 0)."""
    if steps == 0:
        return None
    try:
        return AdaptConfig(
            steps=steps,
            lr=args.lr,
            order=order or args.adapt_order,
            max_patches=args.adapt_patches or None,
            spec=AdapterSpec(args.lora_rank, tuple(args.tucker_ranks)),
        )
    except ValueError as exc:
        raise AdaptUsageError(str(exc)) from exc


def add_adapt_arguments(p: argparse.ArgumentParser) -> None:
    """The adaptation flags ``encode`` and ``bench`` share (each defines its own ``--steps`` and
    ``--adapt-order``: one value for encode, comma lists for bench)."""
    d = AdaptConfig()
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate of the adapters")
    p.add_argument(
        "--adapt-patches",
        type=int,
        default=DEFAULT_ADAPT_PATCHES,
        help="most patches an image trains on per step (0: all, as in the paper; "
        f"default {DEFAULT_ADAPT_PATCHES}): the speed knob for large images",
    )
    p.add_argument("--lora-rank", type=int, default=d.spec.lora_rank)
    p.add_argument("--tucker-ranks", type=int, nargs=3, default=list(d.spec.tucker_ranks), metavar=("R1", "R2", "R3"))
