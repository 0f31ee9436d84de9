"""The codecs under test: the anchors by name, and every lossless ``codec.registry`` codec, run
once per variant (T, order, layers, calibration) when its settings take adaptation steps."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from codec.defaults import DEFAULT_CALIBRATION, DEFAULT_STEPS
from jobs.bench.anchors import ANCHOR_NAMES, Codec, Row, anchor_codecs
from jobs.bench.measure import STAGES
from jobs.runtime import setup_torch

CODEC_NAMES = ("callic", *ANCHOR_NAMES)


@dataclass(frozen=True)
class Variant:
    """One configuration of an adapting codec under test (``callic``, ``auto``: a registry codec
    whose settings take ``steps``): T (0 = no adaptation; default the CLI's and the API's
    ``DEFAULT_STEPS``), the RPFT patch order, the adapted layers and the calibration scheme
    (``codec.mgcf.calibration``; named ``-cal0`` when it is not the default)."""

    steps: int = DEFAULT_STEPS
    order: str = "rate"
    calibration: int = DEFAULT_CALIBRATION
    layers: str = "all"

    def name_for(self, codec: str) -> str:
        """The column of ``codec`` at this variant: ``callic``, ``callic-t10``, ``auto-t10-all-cal0``..."""
        cal = "" if self.calibration == DEFAULT_CALIBRATION else f"-cal{self.calibration}"
        if self.steps == 0:
            return codec + cal
        order = "" if self.order == "rate" else f"-{self.order}"
        layers = "" if self.layers == "all" else f"-{self.layers}"
        return f"{codec}-t{self.steps}{order}{layers}{cal}"

    def settings(self) -> dict[str, Any]:
        """The ``codec.lossless.LosslessSettings`` fields this variant sets."""
        return {
            "steps": self.steps,
            "adapt_order": self.order,
            "adapt_layers": self.layers,
            "calibration": self.calibration,
        }


def adapts(name: str) -> bool:
    """Whether a codec under test is run once per variant: a registry codec whose settings take
    per-image fine-tuning steps (an anchor never is)."""
    from codec import registry

    if name in ANCHOR_NAMES:
        return False
    return "steps" in registry.codec(name).settings_type.field_names()


def expand_codecs(names: Sequence[str], variants: Sequence[Variant]) -> list[str]:
    """Codec names with each adapting codec replaced by one name per variant."""
    return [name for n in names for name in ([v.name_for(n) for v in variants] if adapts(n) else [n])]


def build_codecs(
    names: Sequence[str],
    model_path: str | None,
    device: str,
    threads: int | None,
    variants: Sequence[Variant] = (Variant(0),),
    adapt: dict[str, Any] | None = None,
) -> tuple[list[Codec], str | None]:
    """The selected codecs in the order given: the anchors, and ``codec.registry`` codecs (one
    per variant where they adapt, with the shared adaptation flags ``adapt``, ``LosslessSettings``
    fields). Also the learned model's SHA-256 (hex), if one is used."""
    anchors = anchor_codecs(threads)
    codecs, model_hash = [], None
    for name in names:
        if name in anchors:
            codecs.append(anchors[name])
            continue
        for v in variants if adapts(name) else [None]:
            values = {"model": model_path, **(adapt or {})} | (v.settings() if v else {"steps": 0})
            c, fingerprint = registered_codec(name, values, device, v.name_for(name) if v else name)
            codecs.append(c)
            model_hash = model_hash or fingerprint.get("model")
    return codecs, model_hash


def registered_codec(name: str, values: dict[str, Any], device: str, column: str) -> tuple[Codec, dict[str, str]]:
    """A ``codec.registry`` codec under test with the settings ``values`` (those its settings
    take), opened once: what ``callic archive --codec NAME`` would store, its decoder, and the
    report's stage times and adapters as extra columns. Also its fingerprint (model hashes)."""
    from codec import registry
    from codec.raster import Raster

    chosen = registry.codec(name)
    encoder = chosen.open(chosen.settings_type.pick(values), device)
    last: Row = {}

    def encode(pixels: np.ndarray) -> bytes:
        [(data, report)] = encoder.encode_many([Raster.from_array(pixels)], verify=False)
        last.clear()
        last.update({k: report.timings.get(k) for k in STAGES})
        last.update(adapters=report.adapters, adapter_bytes=report.adapter_bytes)
        return data

    return Codec(column, encode, lambda data: encoder.decode(data).pixels, lambda: dict(last)), encoder.fingerprint()


def model_file_hash(model_path: str | None) -> str:
    """The SHA-256 (hex) of the learned model file (the shipped default if None), from its bytes:
    the driver of a run on workers does not load the model."""
    from codec.modelfiles import default_model_path, digest_of

    return digest_of(model_path or default_model_path()).hex()


def bench_codec_names() -> tuple[str, ...]:
    """What ``--codecs`` takes: callic (with its variants), the anchors, and every lossless codec
    of ``codec.registry`` (``auto``: the file ``callic archive`` keeps)."""
    from codec import registry

    extra = [e.name for e in registry.codec_entries() if not e.lossy and e.name not in CODEC_NAMES]
    return (*CODEC_NAMES, *extra)


def comma_list(text: str) -> list[str]:
    """Comma-separated items, stripped, repeats dropped, order kept."""
    return list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))


def parse_codecs(text: str) -> list[str]:
    """``--codecs a,b``: known names, no repeats, order kept (it is the tables' column order)."""
    names, known = comma_list(text), bench_codec_names()
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown codec {', '.join(unknown) or '(none)'}; use {','.join(known)}")
    return names


@dataclass(frozen=True)
class BenchCodecs:
    """Builds the benchmark's codecs in a Ray worker (the models loaded once per worker)."""

    names: tuple[str, ...]
    model: str | None
    device: str
    chosen: tuple[Variant, ...]
    adapt: tuple[tuple[str, Any], ...]  # the shared adaptation flags, ``LosslessSettings`` fields

    def __call__(self, resources: Any) -> list[Codec]:
        from jobs.runtime import allow_large_images

        allow_large_images()
        setup_torch(resources.threads, self.device)
        return build_codecs(self.names, self.model, self.device, resources.threads, self.chosen, dict(self.adapt))[0]
