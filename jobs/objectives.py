"""What ``callic train`` optimizes, per codec: the model, its loss, validation and export.

The loop in ``jobs.train`` (data, schedule, checkpoints, logs, Ray Train) is shared; an objective
supplies the rest. Metric names become log columns: ``train_<name>`` averaged over the steps since
the last validation, and the validation's own names.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from codec.cca.config import CCAConfig
from codec.cca.loss import CCATrainee, rd_loss
from codec.cca.weights import parse_model as parse_cca_file
from codec.cca.weights import save_model as save_cca_model
from codec.errors import CallicError
from codec.mgcf.config import MGCFConfig
from codec.mgcf.mixture import nll_bits
from codec.mgcf.model import MGCF
from codec.mgcf.weights import parse_model, save_model
from codec.modelfiles import read_model_bytes
from jobs.trainsets import metric_name, sums_by_group
from pipeline.storage import read_url


class MGCFObjective:
    """CALLIC's pre-training: bits per subpixel of the float MGCF on 64x64 crops."""

    train_metrics = ("bpsp",)
    val_metrics = ("val_bpsp",)
    curve = (("train_bpsp", "val_bpsp"), "bits per subpixel (estimated)")
    default_lr = 5e-4

    def __init__(self, tc, options: dict | None = None):
        self.tc, self.options = tc, options

    def build(self) -> nn.Module:
        """A new model, or ``--init``'s weights; ``--patch`` sets the patch size either way (a
        model choice, not a weight: the same weights code any patch size)."""
        if self.tc.init:
            model = parse_model(init_bytes(self.tc.init, self.options), source=self.tc.init).float_model()
        else:
            torch.manual_seed(self.tc.seed)  # every worker starts from the same weights
            model = MGCF(MGCFConfig.tiny() if self.tc.config == "tiny" else MGCFConfig())
        if self.tc.patch is not None:
            try:
                model.cfg = dataclasses.replace(model.cfg, patch=self.tc.patch)
            except ValueError as e:
                raise CallicError(f"--patch {self.tc.patch}: {e}") from e
        return model

    def crop(self, model: nn.Module) -> int:
        return model.cfg.patch

    def config_json(self, model: nn.Module) -> str:
        return model.cfg.to_json()

    def loss(self, net: nn.Module, x: torch.Tensor, amp: bool) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            params = net(x)
        loss = nll_bits(params.float(), x.permute(0, 2, 3, 1), _unwrap(net).cfg.mixtures).mean()
        return loss, {"bpsp": loss.item()}

    @torch.no_grad()
    def validate(
        self, model: nn.Module, tiles: torch.Tensor, device: torch.device, groups: Sequence[str] | None = None
    ) -> dict[str, float]:
        """``val_bpsp`` over all tiles, and ``val_bpsp_<group>`` over each group's (``groups``: one
        name per tile)."""
        bits = []
        for i in range(0, len(tiles), 16):
            x = tiles[i : i + 16].to(device)
            bits.append(nll_bits(model(x).float(), x.permute(0, 2, 3, 1), model.cfg.mixtures).flatten(1).sum(1).cpu())
        subpixels = torch.full((len(tiles),), tiles[0].numel())
        sums = sums_by_group({"bits": torch.cat(bits), "subpixels": subpixels}, groups)
        return {metric_name("val_bpsp", g): s["bits"] / s["subpixels"] for g, s in sums.items()}

    def export(self, model: nn.Module, directory: str) -> Path:
        return save_model(model, directory)


class CCAObjective:
    """The lossy codec: 0.05 * 255**2 * MSE + lmbda * bpp + the CCA term (``codec.cca.loss``),
    on crops of ``--crop`` pixels (256 in the paper). Rates are estimates from likelihoods."""

    train_metrics = ("loss", "bpp", "y_bpp", "aux_bpp", "psnr")
    val_metrics = ("val_bpp", "val_psnr")
    curve = (("train_bpp", "train_aux_bpp", "val_bpp"), "bits per pixel (estimated)")
    default_lr = 1e-4

    def __init__(self, tc, options: dict | None = None):
        self.tc, self.options = tc, options
        if tc.crop % 64:
            raise CallicError("--crop must be a multiple of 64 for the lossy codec (its total stride)")
        if tc.patch is not None:
            raise CallicError("--patch applies to --codec callic; the lossy codec trains on --crop crops")
        if tc.slice_k is not None and tc.init:
            raise CallicError("--slice-k shapes a new model; --init keeps the configuration it starts from")

    def build(self) -> nn.Module:
        """A fresh model; or ``--init``: a model file (with a fresh auxiliary model) or another
        run's ``checkpoint.pt`` (model and auxiliary model; e.g. another rate point's run). A
        fresh auxiliary model predicts badly at first, and L_CCA then rewards an encoder that
        makes it predict worse still, so a new rate point should start from a checkpoint."""
        torch.manual_seed(self.tc.seed)
        if self.tc.init and self.tc.init.endswith(".pt"):
            data = init_bytes(self.tc.init, self.options)
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            trainee = CCATrainee(CCAConfig.from_json(state["config"]))
            trainee.load_state_dict(state["model"])
            return trainee
        if self.tc.init:
            model = parse_cca_file(init_bytes(self.tc.init, self.options), source=self.tc.init).float_model()
            trainee = CCATrainee(model.cfg)  # a fresh auxiliary model
            trainee.model.load_state_dict(model.state_dict())
            return trainee
        cfg = CCAConfig.named("small" if self.tc.config == "default" else self.tc.config)
        if self.tc.slice_k is not None:
            cfg = dataclasses.replace(cfg, k=self.tc.slice_k)
        return CCATrainee(cfg)

    def crop(self, model: nn.Module) -> int:
        return self.tc.crop

    def config_json(self, model: nn.Module) -> str:
        return model.cfg.to_json()

    def loss(self, net: nn.Module, x: torch.Tensor, amp: bool) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            terms = rd_loss(net, x.float() / 255, self.tc.lmbda, self.tc.cca_loss, self.tc.cca_weight)
        metrics = {
            "loss": terms.loss.item(),
            "bpp": terms.bpp,
            "y_bpp": terms.y_bpp,
            "aux_bpp": terms.aux_bpp,
            "psnr": terms.psnr,
        }
        return terms.loss, metrics

    @torch.no_grad()
    def validate(
        self, model: nn.Module, tiles: torch.Tensor, device: torch.device, groups: Sequence[str] | None = None
    ) -> dict[str, float]:
        """Estimated bpp (hard-rounded latents under the model's own likelihoods) and PSNR, over
        all tiles and per group (``val_bpp_<group>``, ``val_psnr_<group>``; ``groups``: one name
        per tile)."""
        codec_model = model.model
        was_training = codec_model.training
        codec_model.eval()
        bits, sq = [], []
        for i in range(0, len(tiles), 8):
            x = tiles[i : i + 8].to(device).float() / 255
            f = codec_model(x)
            bits.append((f.y_bits.reshape(len(x), -1).sum(1) + f.z_bits.reshape(len(x), -1).sum(1)).cpu())
            sq.append((f.x_hat.clamp(0, 1) - x).pow(2).flatten(1).sum(1).cpu())
        codec_model.train(was_training)
        pixels = torch.full((len(tiles),), tiles.shape[2] * tiles.shape[3])
        out = {}
        for g, s in sums_by_group({"bits": torch.cat(bits), "sq": torch.cat(sq), "pixels": pixels}, groups).items():
            mse = s["sq"] / (3 * s["pixels"])
            out[metric_name("val_bpp", g)] = s["bits"] / s["pixels"]
            out[metric_name("val_psnr", g)] = 10 * math.log10(1 / max(mse, 1e-12))
        return out

    def export(self, model: nn.Module, directory: str) -> Path:
        return save_cca_model(model.model, self.tc.lmbda, directory)


OBJECTIVES = {"callic": MGCFObjective, "cca": CCAObjective}


def objective_for(tc, options: dict | None = None):
    """``tc``'s objective; ``options``: the storage options of an ``--init`` URL."""
    return OBJECTIVES[tc.codec](tc, options)


def init_bytes(path: str, options: dict | None) -> bytes:
    """``--init``'s bytes: a local file size-checked as every model file, a URL through
    ``pipeline.storage.Store`` (its retries; ``options``: credentials, endpoint)."""
    if "://" not in path:
        return read_model_bytes(path)
    return read_url(path, options)


def _unwrap(net: nn.Module) -> nn.Module:
    return getattr(net, "module", net)
