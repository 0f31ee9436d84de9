"""``callic train``: train a codec's model on random crops (with flips) of a folder or URL of images.

``--codec callic`` pre-trains MGCF on P x P crops, P the model's patch size (``--patch``);
``--codec cca`` trains the lossy model at one rate point ``--lmbda`` on ``--crop`` crops. What
each optimizes, validates and exports is its objective (``jobs.objectives``); everything below is
shared.

One training loop, ``train_loop``, runs either directly in this process (``--workers 0``, the
default: no Ray start-up, what a laptop or one CPU box wants) or on each worker of a Ray Train
``TorchTrainer`` (``--workers N``, one per GPU or CPU slot, DistributedDataParallel over them).

Choices the papers leave open:
- MGCF's loss: the mixture's bits per subpixel (``codec.mgcf.mixture.nll_bits``), mean over the batch.
- Both: Adam, gradient norm clipped at 1; learning rate warmed up linearly for ``warmup`` steps,
  then a cosine down to 1% at ``steps`` (the CCA paper steps 1e-4 -> 1e-5 instead; a cosine
  serves short CPU runs better and keeps one schedule).
- Crops (``jobs.trainsets``): a source group is drawn with probability proportional to the square
  root of its pixels, then an image of it uniformly (so neither the few large BBC photographs nor
  the many small stamps drown the rest), then a uniform crop, each flip with probability 1/2. The
  crops of step ``s`` on worker ``r`` depend only on (seed, r, s, the images): resuming needs no
  RNG state, and a resumed run makes exactly the step the uninterrupted run would have made.
- Mixed precision: bfloat16 autocast on CUDA (the mixture's likelihood in float32); float32 on CPU.
- Validation: on a fixed set of crop-sized tiles, ``--val-tiles // groups`` per source group of
  the ``--val`` images (``jobs.trainsets``), MGCF's estimated bpsp (from likelihoods, not coded;
  crop-sized because the codec codes each patch on its own, so a tile's NLL is what its patch
  costs), or CCA's estimated bpp and PSNR: over all tiles (``val_bpsp``) and per group
  (``val_bpsp_<group>``), so log.csv's columns depend on the --val folder.
- Checkpoints: ``<out>/checkpoint.pt`` (model, optimizer, next step, wall time; loaded with
  ``weights_only=True``, no pickle) every ``--checkpoint-minutes`` and at the end; ``<out>/log.csv``
  has one row per validation; ``<out>/model/`` holds the latest exported model file. Running the
  same command again resumes from the checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from codec.errors import CallicError
from jobs.cli import STORAGE_OPTIONS_HELP, UsageError, storage_options
from jobs.objectives import OBJECTIVES, objective_for
from jobs.runtime import keep_freed_memory, setup_torch
from jobs.trainsets import Tiles, load_rgb_images, step_crops, val_columns, validation_tiles
from pipeline.storage import Store


def log_fields(objective, val_groups: tuple[str, ...] = (), kept: tuple[str, ...] = ()) -> tuple[str, ...]:
    """log.csv's columns: the validation metrics over all tiles and per group of ``val_groups``
    (so they depend on the --val folder), then ``kept``: columns of an earlier log.csv this run
    does not write (another --val folder's groups), so that resuming never drops logged values."""
    train = tuple(f"train_{m}" for m in objective.train_metrics)
    val = val_columns(objective.val_metrics, val_groups)
    extra = tuple(c for c in kept if c not in val and c not in train)
    return ("step", "elapsed_s", "lr", *train, *val, *extra, "workers", "device")


@dataclass
class TrainConfig:
    data: str
    out: str = "callic-train"
    codec: str = "callic"
    val: str | None = None
    config: str = "default"
    init: str | None = None
    patch: int | None = None  # callic: the model's patch size, also the crop side (None: the model's)
    steps: int = 100_000
    batch: int = 8
    lr: float | None = None  # None: the objective's default
    warmup: int = 200
    seed: int = 0
    minutes: float | None = None
    stop_after: int | None = None
    checkpoint_minutes: float = 5.0
    val_every: int = 500
    val_tiles: int = 64
    threads: int | None = None
    device: str = "auto"
    workers: int = 0
    # The lossy codec (--codec cca) only:
    lmbda: float = 0.85
    cca_loss: str = "two-player"
    cca_weight: float = 1.0
    crop: int = 256
    slice_k: float | None = None  # None: the preset's power-schedule exponent
    quiet: bool = False  # no progress bar or final line (--quiet)


# ---------------------------------------------------------------------------------------------- loop


def learning_rate(tc: TrainConfig, step: int) -> float:
    lr = tc.lr or objective_for(tc).default_lr
    if step < tc.warmup:
        return lr * (step + 1) / tc.warmup
    t = min(1.0, (step - tc.warmup) / max(1, tc.steps - tc.warmup))
    return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


class Run:
    """Where a run keeps its state: ``out`` may be a local folder or an fsspec URL, reached through
    ``pipeline.storage.Store`` (retries; ``options``: its storage options, never written)."""

    def __init__(self, out: str, objective, options: dict | None = None):
        self.objective = objective
        self.val_groups: tuple[str, ...] = ()
        self.kept: tuple[str, ...] = ()
        self.store = Store(str(out), options or {})
        self.fs, self.root = self.store.fs, self.store.root
        self.fs.makedirs(self.root, exist_ok=True)

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def write(self, name: str, data: bytes) -> None:
        """Whole-file write: rename on local disks, one PUT on object stores, so never half a file."""
        self.store.write(name, data)

    def read(self, name: str) -> bytes | None:
        return self.store.read(name) if self.store.exists(name) else None

    def save_checkpoint(self, model: nn.Module, opt: torch.optim.Optimizer, step: int, elapsed: float) -> None:
        buf = io.BytesIO()
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "elapsed_s": elapsed,
            "config": self.objective.config_json(model),
        }
        torch.save(state, buf)
        self.write("checkpoint.pt", buf.getvalue())

    def load_checkpoint(self) -> dict | None:
        data = self.read("checkpoint.pt")
        return None if data is None else torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    @property
    def fields(self) -> tuple[str, ...]:
        return log_fields(self.objective, self.val_groups, self.kept)

    def log_rows(self, upto_step: int) -> list[dict]:
        """The rows of an existing log.csv up to ``upto_step``; an older file's columns are kept
        (the ones it lacks stay empty in its rows)."""
        data = self.read("log.csv")
        reader = csv.DictReader(io.StringIO(data.decode())) if data else None
        rows = list(reader) if reader else []
        if reader and reader.fieldnames:
            self.kept = tuple(c for c in reader.fieldnames if c not in log_fields(self.objective, self.val_groups))
        return [r for r in rows if int(r["step"]) <= upto_step]

    def write_log(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.fields)
        writer.writeheader()
        writer.writerows(rows)
        self.write("log.csv", buf.getvalue().encode())

    def write_curve(self, rows: list[dict]) -> None:
        """``curve.png``: the objective's rate (train and validation) against step, for a glance;
        each validation source group (``val_bpsp_<group>`` columns) as a thin dashed line."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 4))
        ax = fig.subplots()
        keys, label = self.objective.curve
        columns = list(rows[0]) if rows else []
        for key in keys:
            groups = [c for c in columns if c.startswith(key + "_")]
            for column in [key, *groups]:
                points = [(int(r["step"]), float(r[column])) for r in rows if r.get(column, "") != ""]
                if not points:
                    continue
                style = {"marker": "o", "markersize": 3} if column == key else {"linestyle": "--", "linewidth": 0.8}
                ax.plot(*zip(*points, strict=True), label=column.replace("_", " "), **style)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        self.write("curve.png", buf.getvalue())

    def export(self, model: nn.Module) -> str:
        """Write the model file (``model/<codec>-<hash>.safetensors``), then drop older ones."""
        with tempfile.TemporaryDirectory() as tmp:
            local = self.objective.export(model, tmp)
            self.fs.makedirs(self.path("model"), exist_ok=True)
            self.write(f"model/{local.name}", local.read_bytes())
        for old in self.fs.glob(self.path("model/*.safetensors")):
            if not old.endswith(local.name):
                self.fs.rm(old)
        return self.path(f"model/{local.name}")


class Context:
    """What the loop needs from its runner: this worker's rank, world size and device, a way to
    wrap the model for data parallelism, agreement between workers, and metric reporting."""

    rank = 0
    world = 1

    def __init__(self, device: torch.device):
        self.device = device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def agree(self, flag: bool) -> bool:
        return flag

    def report(self, metrics: dict) -> None:
        pass


def pick_device(name: str, threads: int | None = None) -> torch.device:
    """The device ``--device`` names (``auto``: CUDA when present), with torch's CPU threads set
    (``threads``, else ``setup_torch``'s default)."""
    setup_torch(threads, "cpu" if name == "auto" else name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_loop(config: dict, ctx: Context | None = None, options: dict | None = None) -> str | None:
    """Train (or resume) as ``config`` (a ``TrainConfig`` as a dict) says; rank 0 returns the model
    path. ``options``: fsspec storage options of the data, validation, run and ``--init`` URLs
    (credentials: never part of ``config``, which Ray Train keeps in the run folder)."""
    tc = TrainConfig(**config)
    keep_freed_memory()  # each step allocates the same activations again (jobs.runtime)
    if ctx is None:
        ctx = Context(pick_device(tc.device, tc.threads))
    elif tc.threads:
        torch.set_num_threads(tc.threads)
    objective = objective_for(tc, options)
    run = Run(tc.out, objective, options)
    model = objective.build()
    crop = objective.crop(model)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate(tc, 0))
    ckpt = run.load_checkpoint()
    step, elapsed = 0, 0.0
    if ckpt is not None:
        if ckpt["config"] != objective.config_json(model):
            raise CallicError(f"{run.path('checkpoint.pt')} holds a different model configuration")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, elapsed = int(ckpt["step"]), float(ckpt["elapsed_s"])
    images = load_rgb_images(tc.data, crop, options)
    tiles = validation_tiles(load_rgb_images(tc.val, crop, options), tc.val_tiles, crop) if tc.val else None
    run.val_groups = tiles.groups if tiles is not None else ()
    rows = run.log_rows(step) if ctx.rank == 0 else []
    net = ctx.wrap(model.train())
    amp = ctx.device.type == "cuda"
    started, last_ckpt = time.monotonic() - elapsed, time.monotonic()
    metrics: list[dict[str, float]] = []
    first_step = step
    interval = 1 if sys.stderr.isatty() else 60
    bar = tqdm(total=tc.steps, initial=step, disable=ctx.rank != 0 or tc.quiet, file=sys.stderr, mininterval=interval)
    if ctx.rank == 0 and step == 0 and tiles is not None:
        rows.append(_log_row(tc, ctx, 0, 0.0, [], _validate(objective, model, tiles, ctx.device)))
        run.write_log(rows)
    while step < tc.steps:
        x = step_crops(images, tc.batch, crop, tc.seed, ctx.rank, step).to(ctx.device)
        for group in opt.param_groups:
            group["lr"] = learning_rate(tc, step)
        loss, step_metrics = objective.loss(net, x, amp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        metrics.append(step_metrics)
        bar.update(1)
        first = objective.train_metrics[0]
        bar.set_postfix({first: f"{np.mean([m[first] for m in metrics[-50:]]):.4f}"}, refresh=False)
        now = time.monotonic()
        out_of_time = ctx.agree(
            (tc.minutes is not None and now - started - elapsed > 60 * tc.minutes)
            or (tc.stop_after is not None and step - first_step >= tc.stop_after)
        )
        last = step == tc.steps or out_of_time
        if step % tc.val_every == 0 or last:
            report = {"step": step}
            if ctx.rank == 0:
                val = _validate(objective, model, tiles, ctx.device) if tiles is not None else {}
                rows.append(_log_row(tc, ctx, step, now - started, metrics, val))
                run.write_log(rows)
                run.write_curve(rows)
                report = {k: v for k, v in rows[-1].items() if v != ""}
                bar.write(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in rows[-1].items() if k != "step"))
            metrics = []
            ctx.report(report)  # every worker reports: Ray Train's report is collective
        if ctx.rank == 0 and (last or now - last_ckpt > 60 * tc.checkpoint_minutes):
            run.save_checkpoint(model, opt, step, now - started)
            last_ckpt = now
        if out_of_time:
            bar.write(f"stopping at step {step} (time or step limit); run the same command to resume")
            break
    bar.close()
    if ctx.rank != 0:
        return None
    path = run.export(model.eval())
    if not tc.quiet:
        print(f"model: {path}")
    return path


def _validate(objective, model: nn.Module, tiles: Tiles, device: torch.device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        return objective.validate(model, tiles.pixels, device, tiles.groups)
    finally:
        model.train(was_training)


def _log_row(tc: TrainConfig, ctx: Context, step: int, elapsed: float, metrics: list[dict], val: dict) -> dict:
    objective = objective_for(tc)
    row = {"step": step, "elapsed_s": f"{elapsed:.1f}", "lr": f"{learning_rate(tc, step - 1):.3g}"}
    for m in objective.train_metrics:
        row[f"train_{m}"] = f"{np.mean([s[m] for s in metrics]):.4f}" if metrics else ""
    row |= {m: f"{v:.4f}" for m, v in val.items()}  # over all tiles and per group (a missing one stays empty)
    row |= {m: f"{v:.4f}" for m, v in val.items()}  # and per group
    row["workers"] = ctx.world
    row["device"] = ctx.device.type if ctx.device.type == "cpu" else torch.cuda.get_device_name(ctx.device)
    return row


# ---------------------------------------------------------------------------------------------- Ray


class RayContext(Context):
    """One Ray Train worker: DistributedDataParallel over the workers, metrics to Ray."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        super().__init__(ray.train.torch.get_device())

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def agree(self, flag: bool) -> bool:
        """Stop together: every worker takes rank 0's decision, or DDP would wait forever."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        torch.distributed.broadcast(t, src=0)
        return bool(t.item())

    def report(self, metrics: dict) -> None:
        import ray.train

        ray.train.report(metrics)


def _ray_worker(config: dict) -> None:
    train_loop(config, RayContext())


def train_with_ray(tc: TrainConfig) -> None:
    """Run ``train_loop`` on ``tc.workers`` Ray Train workers (GPUs when the cluster has them)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Workers run in their own working directories: local paths must be absolute.
    tc = dataclasses.replace(tc, **{k: _absolute(getattr(tc, k)) for k in ("data", "val", "out", "init")})
    if not ray.is_initialized():
        ray.init()
    use_gpu = tc.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= tc.workers
    scaling = ScalingConfig(num_workers=tc.workers, use_gpu=use_gpu, resources_per_worker={"CPU": tc.threads or 1})
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config=dataclasses.asdict(tc),
        scaling_config=scaling,
        run_config=RunConfig(name="ray", storage_path=tc.out),
    )
    try:
        trainer.fit()
    except Exception as e:  # Ray wraps worker errors; say what failed without a cluster traceback
        raise CallicError(f"training failed on a Ray worker: {e}") from e


def _absolute(path: str | None) -> str | None:
    return path if path is None or "://" in path else os.path.abspath(path)


def main(args) -> int:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    tc = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    options = storage_options(args.storage_options)
    if tc.workers > 0:
        if options:  # Ray Train would keep them in the run folder with the loop's config
            raise UsageError("--storage-options with --workers: give the workers credentials through the environment")
        train_with_ray(tc)
    else:
        train_loop(dataclasses.asdict(tc), options=options)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a codec model (MGCF, or the lossy CCA model) on images (resumable)")
    p.add_argument("data", help="folder or fsspec URL of training images")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or final line (errors still show)")
    p.add_argument("--out", default="callic-train", help="run folder or URL: checkpoint, log.csv, model/")
    p.add_argument("--storage-options", help=STORAGE_OPTIONS_HELP + " of DATA, --val, --out and --init URLs")
    p.add_argument("--codec", choices=sorted(OBJECTIVES), default="callic", help="callic (lossless) or cca (lossy)")
    p.add_argument("--val", help="folder or URL of validation images (e.g. the 'val' set of callic data)")
    p.add_argument(
        "--config",
        choices=["default", "tiny", "small", "paper"],
        default="default",
        help="model size: callic default|tiny; cca small (= default)|paper|tiny",
    )
    p.add_argument("--init", help="model file to start from (its configuration is kept, but for --patch)")
    p.add_argument(
        "--patch",
        type=int,
        help="callic: patch size P the model codes with, and the crop side it trains on (default: the "
        "--init model's, else 64); MGCF's weights do not depend on P",
    )
    p.add_argument("--steps", type=int, default=TrainConfig.steps, help="total steps; sets the cosine schedule")
    p.add_argument("--batch", type=int, default=TrainConfig.batch, help="crops per step per worker")
    p.add_argument("--lr", type=float, help="peak learning rate (callic 5e-4, cca 1e-4)")
    p.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, help="stop (with a checkpoint) after this many minutes")
    p.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many steps of this run")
    p.add_argument("--checkpoint-minutes", type=float, default=TrainConfig.checkpoint_minutes)
    p.add_argument("--val-every", type=int, default=TrainConfig.val_every)
    p.add_argument("--val-tiles", type=int, default=TrainConfig.val_tiles)
    p.add_argument("--threads", type=int, help="torch CPU threads (per worker)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--workers", type=int, default=0, help="Ray Train workers (0: train in this process, no Ray)")
    p.add_argument("--lmbda", type=float, default=TrainConfig.lmbda, help="cca: rate weight (higher: fewer bits)")
    p.add_argument(
        "--cca-loss",
        choices=["two-player", "literal", "off"],
        default=TrainConfig.cca_loss,
        help="cca: the CCA term's reading (see codec/cca/loss.py), or off",
    )
    p.add_argument("--cca-weight", type=float, default=TrainConfig.cca_weight)
    p.add_argument("--crop", type=int, default=TrainConfig.crop, help="cca: crop side in pixels (multiple of 64)")
    p.add_argument(
        "--slice-k", type=float, help="cca, new models only: slice-size exponent (preset: 1.7, uneven; 0: even slices)"
    )
    p.set_defaults(func=main)
