"""``callic train``: pre-train MGCF on random 64x64 crops (with flips) of a folder of images.

Loss: the mixture's bits per subpixel (``codec.mixture.nll_bits``); Adam with a cosine learning
rate. This is the minimal trainer that produced the interim shipped weights; checkpoints,
validation and multi-worker training are added with the training issue.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from codec.config import MGCFConfig
from codec.images import read_image
from codec.mgcf import MGCF
from codec.mixture import nll_bits
from codec.weights import load_model_file, save_model

IMAGE_SUFFIXES = {".png", ".ppm", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg"}


def load_rgb_images(folder: str | Path, min_side: int) -> list[np.ndarray]:
    images = []
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raster = read_image(path)
            if raster.pixels.dtype == np.uint8 and raster.mode in ("RGB", "RGBA"):
                px = raster.pixels[..., :3]
                if min(px.shape[:2]) >= min_side:
                    images.append(np.ascontiguousarray(px))
    if not images:
        raise SystemExit(f"no RGB images of at least {min_side}x{min_side} under {folder}")
    return images


def random_crops(images: list[np.ndarray], n: int, size: int, rng: random.Random) -> torch.Tensor:
    crops = []
    for _ in range(n):
        img = images[rng.randrange(len(images))]
        y, x = rng.randrange(img.shape[0] - size + 1), rng.randrange(img.shape[1] - size + 1)
        c = img[y : y + size, x : x + size]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        if rng.random() < 0.5:
            c = c[::-1]
        crops.append(np.ascontiguousarray(c))
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)


def train(
    images: list[np.ndarray],
    cfg: MGCFConfig,
    steps: int,
    batch: int = 8,
    lr: float = 5e-4,
    seed: int = 0,
    minutes: float | None = None,
    log=print,
    init: MGCF | None = None,
    on_checkpoint=None,
    checkpoint_every: int = 200,
) -> MGCF:
    """Train from scratch, or continue from ``init``; ``on_checkpoint(model)`` every few hundred steps."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = init.train() if init is not None else MGCF(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    start = time.monotonic()
    for step in range(steps):
        x = random_crops(images, batch, cfg.patch, rng)
        loss = nll_bits(model(x), x.permute(0, 2, 3, 1), cfg.mixtures).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step} loss {loss.item():.4f} bpsp  {time.monotonic() - start:.0f}s")
        if on_checkpoint is not None and step % checkpoint_every == checkpoint_every - 1:
            on_checkpoint(model.eval())
            model.train()
        if minutes is not None and time.monotonic() - start > 60 * minutes:
            log(f"stopping after {minutes} minutes at step {step}")
            break
    return model.eval()


def main(args) -> int:
    init = load_model_file(args.init).float_model() if args.init else None
    cfg = init.cfg if init is not None else MGCFConfig.tiny() if args.config == "tiny" else MGCFConfig()
    images = load_rgb_images(args.data, cfg.patch)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = train(
        images,
        cfg,
        args.steps,
        args.batch,
        args.lr,
        args.seed,
        args.minutes,
        init=init,
        on_checkpoint=lambda m: print("checkpoint", save_model(m, args.out), flush=True),
    )
    path = save_model(model, args.out)
    print(path)
    return 0
