"""What encoding one image did: the one report every codec returns (``codec.registry.Encoder``).

Torch-free, so that the pipeline and the bench can read reports without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EncodeReport:
    """What encoding one image did and how long each stage took (seconds; adaptation stages are
    those of the whole batch the image was adapted in). Bits marked ``estimated`` come from the
    float model's likelihoods, not from coded sizes.

    ``learned_bytes`` and ``classical_bytes`` are the sizes of the two candidate files, None where
    one was not coded (the learned one with ``coder="classical"`` or for an image it does not code,
    the classical one with ``coder="learned"``); ``bytes`` is the kept one's."""

    bytes: int = 0
    coder: str = ""
    steps: int = 0  # adaptation steps run for this image (paid for even when its file is not kept)
    # "none" (not adapted), "kept" or "dropped". Adapters are kept when they are estimated to pay
    # for their bits *and* the file with them is really smaller (the image is then coded twice,
    # and the exact pass and coding times include both); "dropped" too when the classical file won.
    adapters: str = "none"
    adapter_bytes: int = 0
    estimated_base_bits: float | None = None
    estimated_adapted_bits: float | None = None  # image bits with adapters, adapter bits excluded
    learned_bytes: int | None = None
    classical_bytes: int | None = None
    model_hash: str | None = None  # SHA-256 (hex) of the model file that coded the kept file
    psnr: float | None = None  # lossy files: dB of the reconstruction a decoder gives back
    timings: dict[str, float] = field(default_factory=dict)
    extra_facts: dict[str, str] = field(default_factory=dict)  # a codec's own facts, for the manifest

    def manifest_facts(self) -> dict[str, str]:
        """What a job manifest's ``codec_facts`` holds for the kept file: the model that coded it
        (``model_hash``), its fine-tuning where it had any (``steps``, paid for even where the
        adapters were dropped, and ``adapter_bytes`` where they were kept), and the codec's
        ``extra_facts``. Empty for a file no model coded (the classical ones)."""
        found: dict[str, str] = {}
        if self.model_hash:
            found["model_hash"] = self.model_hash
            if self.steps:
                found["steps"] = str(self.steps)
            if self.adapters == "kept":
                found["adapter_bytes"] = str(self.adapter_bytes)
        return found | self.extra_facts
