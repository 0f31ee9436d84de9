"""The learned coder's files (CALLIC): a loaded model, one image's learned file with and without
its adapters, and the decoder's side (``codec.registry`` names ``decode_mgcf`` for coder 1).

The lossless policy that chooses between this file and the classical one is ``codec.api``'s; the
file layout (HEAD, ADPT, DATA, ALPH) is described there.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from codec import fallback
from codec.container import Container
from codec.defaults import MAX_PATCHES_PER_STREAM
from codec.errors import CorruptFileError
from codec.fileformat import file_header, write_file
from codec.header import CODER_MGCF, Header, calibration_scheme
from codec.mgcf import adapters, learned
from codec.mgcf.adapters import AdapterSet, merge
from codec.mgcf.exact import ExactMGCF
from codec.mgcf.model import MGCF
from codec.mgcf.rpft import Adapted
from codec.mgcf.weights import ModelFile, exact_model_by_hash, load_model_file
from codec.modelfiles import default_model_path
from codec.raster import Raster
from codec.report import EncodeReport

SECTION_OVERHEAD = 12  # bytes a section adds besides its payload: tag, length, CRC


def _mgcf_payload(streams: list[bytes]) -> bytes:
    return struct.pack(f"<I{len(streams)}I", len(streams), *map(len, streams)) + b"".join(streams)


@dataclass
class Model:
    """A loaded model file: the exact model that codes, its hash, and (loaded on first use) the
    float model that per-image adaptation fine-tunes."""

    exact: ExactMGCF
    digest: bytes
    file: ModelFile | None = None
    _float: dict[str, MGCF] = field(default_factory=dict, init=False, repr=False)
    _cpu: dict[str, Model] = field(default_factory=dict, init=False, repr=False)

    def float_model(self, device: str | torch.device) -> MGCF:
        key = str(device)
        if key not in self._float:
            if self.file is None:
                raise ValueError("this model was loaded without its float weights; adaptation needs them")
            self._float[key] = self.file.float_model().to(device)
        return self._float[key]

    def on_cpu(self) -> Model:
        """This model's exact path on the CPU, where every file is verified: copied from the
        GPU once, not per image (itself when it is on the CPU already)."""
        if str(self.exact.device) == "cpu":
            return self
        if "cpu" not in self._cpu:
            self._cpu["cpu"] = Model(self.exact.to("cpu"), self.digest)
        return self._cpu["cpu"]


def load_model(model: str | None = None, device: str = "cpu") -> Model:
    """The model in a file (default: the shipped model), ready to code on ``device``."""
    mf = load_model_file(model or default_model_path())
    return Model(mf.exact_model(device), mf.digest, mf)


def with_adapters(net: ExactMGCF, adapters: AdapterSet) -> ExactMGCF:
    """The exact model with an image's adapters merged into its integer weights."""
    return ExactMGCF(net.cfg, merge(net.cfg, net.t, adapters), net.luts, net.device)


def adapter_choice(model: Model, adapted: Adapted, report: EncodeReport) -> tuple[ExactMGCF, bytes] | None:
    """The merged model and ADPT section, if the adapters are estimated to pay for their bits."""
    net = model.exact
    report.timings.update(adapted.timings)
    report.estimated_base_bits = adapted.base_bits
    report.estimated_adapted_bits = adapted.adapted_bits
    section = adapters.encode_section(net.cfg, adapted.adapters, net.luts["sigmoid"])
    report.adapter_bytes = len(section)
    report.adapters = "dropped"
    if adapted.adapted_bits + 8 * (len(section) + SECTION_OVERHEAD) >= adapted.base_bits:
        return None
    try:
        return with_adapters(net, adapted.adapters), section
    except ValueError:  # a merged layer could overflow the exact accumulator: code without
        return None


@dataclass
class LearnedFile:
    """One image's learned-coder file, first with the pre-trained model, then (``try_adapters``)
    with its adapters if they make it smaller."""

    raster: Raster
    rgb: np.ndarray
    header: Header
    alpha: bytes | None  # ALPH payload of an RGBA image
    per: int
    calibration: int
    data: bytes = b""

    @classmethod
    def code(
        cls, raster: Raster, model: Model, per: int, effort: int, report: EncodeReport, calibration: int
    ) -> LearnedFile:
        pixels = raster.pixels
        alpha = fallback.jxl_encode(np.ascontiguousarray(pixels[..., 3]), effort) if raster.channels == 4 else None
        header = file_header(raster, CODER_MGCF, model.digest, model.exact.cfg.patch, per)
        out = cls(raster, np.ascontiguousarray(pixels[..., :3]), header, alpha, per, calibration)
        out.data = out._file(model.exact, None, report)
        return out

    def try_adapters(self, model: Model, adapted: Adapted, report: EncodeReport) -> None:
        """Keep the image's adapters if they are estimated to pay and the file is really smaller
        (estimates can be wrong by more than the margin: the real sizes decide)."""
        choice = adapter_choice(model, adapted, report)
        if choice is None:
            return
        data = self._file(choice[0], choice[1], report)
        if len(data) < len(self.data):
            self.data, report.adapters = data, "kept"

    def _file(self, net: ExactMGCF, section: bytes | None, report: EncodeReport) -> bytes:
        with torch.inference_mode():
            streams = learned.encode_rgb(self.rgb, net, self.per, timings=report.timings, calibration=self.calibration)
        return write_file(
            self.raster,
            self.header,
            _mgcf_payload(streams),
            alpha=self.alpha,
            section=section,
            calibration=self.calibration,
        )


# ---------------------------------------------------------------- decoding


def _split_streams(data: bytes, expected: int) -> list[bytes]:
    if len(data) < 4:
        raise CorruptFileError("DATA section too short")
    (n,) = struct.unpack_from("<I", data, 0)
    if n != expected:
        raise CorruptFileError(f"DATA holds {n} streams, the image needs {expected}")
    if len(data) < 4 + 4 * n:
        raise CorruptFileError("DATA section too short for its stream table")
    lengths = struct.unpack_from(f"<{n}I", data, 4)
    pos = 4 + 4 * n
    if pos + sum(lengths) != len(data):
        raise CorruptFileError("stream lengths do not add up to the DATA section")
    out = []
    for length in lengths:
        out.append(data[pos : pos + length])
        pos += length
    return out


def decode_mgcf(header: Header, container: Container, payload: bytes, models: list[Any], device: str) -> np.ndarray:
    """The learned coder's pixels (``codec.registry.PixelDecoder``): RGB from the streams, with the
    file's adapters merged into the model first, and an RGBA file's alpha plane from ALPH."""
    if header.dtype != "uint8" or header.channels not in (3, 4):
        raise CorruptFileError("mgcf coder with a non 8-bit RGB(A) header")
    loaded = next((m for m in models if isinstance(m, Model) and m.digest == header.model_hash), None)
    net = loaded.exact if loaded is not None else exact_model_by_hash(header.model_hash, device)
    section = container.get(adapters.SECTION)
    if section is not None:
        try:
            net = with_adapters(net, adapters.decode_section(net.cfg, section, net.luts["sigmoid"]))
        except ValueError as exc:
            raise CorruptFileError(f"adapters in the file do not fit the model: {exc}") from exc
    if header.patch != net.cfg.patch or not 1 <= header.patches_per_stream <= MAX_PATCHES_PER_STREAM:
        raise CorruptFileError(f"patch layout {header.patch}/{header.patches_per_stream} does not fit the model")
    n = learned.stream_count(header.height, header.width, header.patch, header.patches_per_stream)
    streams = _split_streams(payload, n)
    with torch.inference_mode():
        rgb = learned.decode_rgb(
            streams,
            header.height,
            header.width,
            net,
            header.patches_per_stream,
            calibration=calibration_scheme(container),
        )
    if header.channels == 3:
        return rgb
    alpha = fallback.jxl_decode(container.require(b"ALPH"), (header.height, header.width), np.dtype(np.uint8))
    return np.concatenate([rgb, alpha[..., None]], axis=2)
