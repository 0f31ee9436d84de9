"""``callic archive --adapt-corpus``: before any shard, adapt the learned model to a sample of the
job's images (``codec.mgcf.corpus``) and code the job with it, if it pays.

The sample is drawn (seeded by the job id, so a job's sample is reproducible) from the sources a
learned file can come from (PNG, PPM, BMP, TIFF); sources that do not read as 8-bit RGB(A) are
skipped, as are unreadable ones (the job itself reports those). The adaptation runs in the
driver, on its GPU if it has one. A kept model is written where models are found by hash
(``~/.cache/callic/models``) and named in the job's codec settings; the job then pins it (and its
base) and copies both into its folder like every model (``pipeline.job``), so a restore anywhere
finds them. A model that does not pay (held-out estimate: bits saved on the sample below its
size) is not written, and the job codes with the base model; the spec's ``corpus`` says which.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from codec.errors import CallicError
from codec.images import read_image
from jobs.archivecodec import CodecSettings
from pipeline.storage import Store

LEARNED_SUFFIXES = (".png", ".ppm", ".pnm", ".bmp", ".tif", ".tiff")
USER_MODELS = Path.home() / ".cache" / "callic" / "models"


def _sample(src: Store, keys: list[str], n: int, seed: int, max_bytes: int, timeout_s: float) -> list[np.ndarray]:
    """Up to ``n`` RGB arrays from ``keys`` in a seeded random order (reading at most 4n files)."""
    candidates = [k for k in keys if k.lower().endswith(LEARNED_SUFFIXES)]
    order = np.random.default_rng(seed).permutation(len(candidates))
    images: list[np.ndarray] = []
    for i in order[: 4 * n]:
        key = candidates[i]
        try:
            px = read_image(src.read_source(key, max_bytes, timeout_s), name=key).pixels
        except (CallicError, OSError):
            continue
        if px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] in (3, 4):
            images.append(np.ascontiguousarray(px[..., :3]))
        if len(images) == n:
            break
    return images


def _classical_bpsp(images: list[np.ndarray], settings: CodecSettings) -> list[float]:
    """Bits per subpixel of the JPEG-XL file ``auto`` would keep instead of a larger learned one."""
    from codec import fallback

    return [8 * len(fallback.jxl_encode(px, settings.jxl_effort)) / px.size for px in images]


def adapt_to_corpus(
    src: Store,
    keys: list[str],
    settings: CodecSettings,
    job_id: str,
    sample: int,
    steps: int,
    minutes: float | None,
    limits: tuple[int, float],
    models_dir: Path | None = None,
) -> tuple[CodecSettings, dict[str, Any]]:
    """The job's settings (with the corpus model, if kept) and the spec's ``corpus`` facts."""
    import torch

    from codec.mgcf.coder import load_model
    from codec.mgcf.corpus import CorpusConfig, adapt_corpus
    from codec.mgcf.weights import file_name, serialize_adapted
    from codec.modelfiles import write_named
    from jobs.runtime import setup_torch

    seed = zlib.crc32(job_id.encode())
    images = _sample(src, keys, sample, seed, *limits)
    facts: dict[str, Any] = {"kept": False, "sample": len(images)}
    if len(images) < 2:
        facts["reason"] = "fewer than 2 sample images the learned coder codes"
        return settings, facts
    device = "cuda" if torch.cuda.is_available() else "cpu"
    setup_torch(None, device)
    model = load_model(settings.model, device="cpu")
    if model.file is None or model.file.base is not None:
        raise CallicError("--adapt-corpus needs a plain model, and --model is a corpus-adapted one already")
    cfg = CorpusConfig(steps=steps, minutes=minutes, seed=seed)
    result = adapt_corpus(model.float_model(device), images, cfg, settings.calibration)
    data = serialize_adapted(model.file, result.adapters)
    floor = _classical_bpsp([images[i] for i in result.held_out], settings) if settings.codec == "auto" else None
    before, after = result.bpsp()
    facts |= {
        "base_model": model.digest.hex(),
        "model_bytes": len(data),
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "estimated_saved_bits": round(result.saved_bits(floor)),
        "estimated_held_out_bpsp": [round(before, 4), round(after, 4)],
        "calibrated": bool(settings.calibration),
        "held_out_classical_bpsp": None if floor is None else [round(f, 4) for f in floor],
    }
    if not result.pays(len(data), floor):
        facts["reason"] = "the estimated bits saved on the sample do not pay for the model"
        return settings, facts
    path = write_named(data, models_dir or USER_MODELS, file_name)
    facts |= {"kept": True, "model_hash": hashlib.sha256(data).hexdigest()}
    return dataclasses.replace(settings, model=str(path)), facts


def describe(facts: dict[str, Any]) -> str:
    """One line for the person who ran the job."""
    if not facts.get("model_bytes"):
        return f"corpus adaptation skipped: {facts.get('reason')}"
    base, adapted = facts["estimated_held_out_bpsp"]
    what = f"kept: model {facts['model_hash'][:16]}" if facts["kept"] else "dropped, the job codes with the base model"
    return (
        f"corpus adaptation on {facts['sample']} images, {facts['steps']} steps in {facts['seconds']:.0f} s: "
        f"held-out {base:.4f} -> {adapted:.4f} bpsp (estimated), {facts['model_bytes']} bytes of model, "
        f"{facts['estimated_saved_bits'] / 8:.0f} bytes saved on the sample (estimated); {what}"
    )
