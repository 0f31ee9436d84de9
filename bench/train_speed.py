"""Speed of MGCF's training step on a CPU: ms per step, pixels per second, and where the time goes.

    python bench/train_speed.py [--configs 64x4,64x8,64x16,128x2,128x4] [--threads 1,2] [--steps 10]
                                [--warmup 2] [--variants base,dw-plain,...] [--profile base,...]
                                [--ddp 2] [--malloc-cache] [--tiny] [--json FILE]

The step is ``jobs/train.py``'s (read there): the float ``MGCF`` on a batch of uint8 crops laid out
as ``step_crops`` makes them, loss = mean ``nll_bits``, ``zero_grad``, backward, gradient norm
clipped at 1, Adam. A config ``CxB`` is a batch of B crops of C x C; a 128x128 crop has 4x the
pixels of a 64x64 one, so compare pixels/s across crop sizes, ms/step within one.

Each row also gives the step's CPU time (this process, all threads: with 1 thread it is the
wall time less the time other processes took the core, the steadier number on a shared machine)
and its minor page faults.

Variants are measured INTERLEAVED (step of A, step of B, step of A, ...) in one process from the
same weights on the same batch, because this bench usually shares the CPU with other work: a slow
phase of the machine then slows every variant alike. Each row gives the median ms/step with its
quartiles, and ``ratio``, the median over rounds of (this variant's step / the first variant's step
of the same round) with its quartiles: a ratio whose quartiles straddle 1 is noise. ``loss0`` is
the first step's loss (same weights, same batch): a variant that keeps the function gives the first
variant's value up to float rounding.

Variants (``--variants``; the first is the reference of ``ratio``):

- ``base``: the model as ``codec/mgcf/model.py`` has it.
- ``dw-plain``: the masked depth-wise convolutions as a plain ``F.conv2d`` of the whole masked k x k
  kernel and autograd's own backward (what ``codec/mgcf/model.py`` did before ``masked_depthwise``).
- ``compile``: ``torch.compile`` of the model (compile time falls in the warm-up steps).
- ``bf16``: bfloat16 autocast of the model's forward (the loss in float32, as training on CUDA).
- ``tanh-gelu``: GELU's tanh approximation. It changes the function (the exact decoder tabulates
  erf-GELU, so adopting it would need a new model type); measured as an option only.
- ``no-mkldnn``: ``torch.backends.mkldnn`` disabled for the step (ATen's own convolutions).

``--profile V,...`` adds, per config and thread count, the breakdown of a few steps of each listed
variant (``torch.profiler``, self CPU time of every op, grouped: GEMM, convolutions forward and
backward, GELU, layer norm, copies and fills, other element-wise ops, mixture loss, gradient
clipping, optimizer, framework overhead).

``--malloc-cache`` keeps freed memory in this process (glibc ``mallopt``: no ``mmap`` below 1 GiB,
no trimming below 2 GiB) instead of handing every large block back to the kernel when it is freed:
otherwise each step page-faults its activations in again (``faults`` in the rows: minor page faults
per step). It changes the process, not the step, so it cannot be interleaved with variants in one
process: compare it by alternating whole runs with and without it. ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` in the environment do the same for any command; ``callic train`` does it
itself (``jobs.runtime.keep_freed_memory``).

``--ddp N`` adds, per config, one row for N processes of ``--threads``' first value each, with
DistributedDataParallel over gloo on this machine, each on batch/N crops (the same global batch,
so its ms/step compares with one process at N threads). It needs N free cores to mean anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from codec.mgcf.config import MGCFConfig
from codec.mgcf.mixture import nll_bits
from codec.mgcf.model import MGCF, MaskedConv2d
from jobs.runtime import keep_freed_memory

LR = 1e-4
SECTION = "train_speed."


# ---------------------------------------------------------------------------------------------
# Variants


def _plain_dw_forward(self: MaskedConv2d, x: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
    """The depth-wise convolution as one F.conv2d of the whole masked kernel (the code before
    ``codec.mgcf.model.masked_depthwise``), for the ``dw-plain`` variant."""
    weight = self.weight if delta is None else self.weight + delta[0]
    return F.conv2d(x, weight * self.mask, self.bias, padding=self.padding, groups=self.groups)


def _use_plain_dw(model: MGCF) -> nn.Module:
    for block in model.blocks:
        block.dw.forward = _plain_dw_forward.__get__(block.dw)
    return model


@contextlib.contextmanager
def _tanh_gelu() -> Iterator[None]:
    """GELU's tanh approximation for the code run inside (``codec.mgcf.model`` calls ``F.gelu``)."""
    exact = F.gelu
    F.gelu = lambda x, approximate="none": exact(x, approximate="tanh")
    try:
        yield
    finally:
        F.gelu = exact


@dataclass(frozen=True)
class Variant:
    """How one variant differs from ``base``: the network it calls, and a context around its
    forward (``forward``) or its forward and backward (``step``)."""

    prepare: Callable[[MGCF], nn.Module] = lambda model: model
    forward: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    step: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


VARIANTS: dict[str, Variant] = {
    "base": Variant(),
    "dw-plain": Variant(prepare=_use_plain_dw),
    "compile": Variant(prepare=lambda model: torch.compile(model)),
    "bf16": Variant(forward=lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
    "tanh-gelu": Variant(forward=_tanh_gelu),
    "no-mkldnn": Variant(step=lambda: torch.backends.mkldnn.flags(enabled=False)),
}


# ---------------------------------------------------------------------------------------------
# The step


def make_batch(crop: int, batch: int, seed: int = 0) -> torch.Tensor:
    """(batch, 3, crop, crop) uint8 with channels-last strides, as the trainer's ``step_crops`` returns:
    smooth gradients plus noise, so the values look like pixels (the step's speed does not depend
    on them)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:crop, 0:crop]
    out = np.empty((batch, crop, crop, 3), np.uint8)
    for b in range(batch):
        base = rng.uniform(40, 200, 3) + rng.uniform(-1, 1, 3) * yy[..., None] + rng.uniform(-1, 1, 3) * xx[..., None]
        out[b] = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


class TrainStep:
    """One variant's model, optimizer and batch; calling it makes one training step."""

    def __init__(self, cfg: MGCFConfig, variant: str, state: dict, x: torch.Tensor, ddp: bool = False):
        self.spec = VARIANTS[variant]
        self.model = MGCF(cfg)
        self.model.load_state_dict(state)
        self.model.train()
        net: nn.Module = self.spec.prepare(self.model)
        if ddp:
            net = nn.parallel.DistributedDataParallel(net)
        self.net = net
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.x = x
        self.mixtures = cfg.mixtures

    def __call__(self, marker: bool = False) -> float:
        """One step; ``marker``: label its phases for the profiler (``breakdown``)."""
        section = torch.profiler.record_function if marker else (lambda name: contextlib.nullcontext())
        with self.spec.step():
            with section(SECTION + "forward"), self.spec.forward():
                params = self.net(self.x)
            if marker:
                params.register_hook(_mark_loss_backward_done)
            with section(SECTION + "loss"):
                loss = nll_bits(params.float(), self.x.permute(0, 2, 3, 1), self.mixtures).mean()
            with section(SECTION + "optimizer"):
                self.opt.zero_grad(set_to_none=True)
            with section(SECTION + "backward"):
                loss.backward()
            with section(SECTION + "clip"):
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            with section(SECTION + "optimizer"):
                self.opt.step()
        return loss.item()


def _mark_loss_backward_done(grad: torch.Tensor) -> None:
    """Hook on the model's output: its gradient is ready, so the loss's backward is over."""
    with torch.profiler.record_function(SECTION + "loss_backward_done"):
        pass


# ---------------------------------------------------------------------------------------------
# Interleaved timing


@dataclass
class Config:
    crop: int
    batch: int

    @property
    def pixels(self) -> int:
        return self.crop * self.crop * self.batch

    @classmethod
    def parse(cls, text: str) -> Config:
        crop, batch = (int(v) for v in text.lower().split("x"))
        if crop < 2 or batch < 1:
            raise ValueError(f"bad config {text!r}: want CROPxBATCH, e.g. 64x8")
        return cls(crop, batch)


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)  # wall time per step
    cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU time per step, all threads
    faults: list[int] = field(default_factory=list)  # minor page faults per step
    loss0: float = math.nan
    error: str = ""


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved(cfg: MGCFConfig, conf: Config, variants: list[str], steps: int, warmup: int) -> dict[str, Timing]:
    """Warm every variant up, then time ``steps`` rounds of one step of each, in turn."""
    state = MGCF(cfg).state_dict()
    x = make_batch(conf.crop, conf.batch)
    runners, timings = {}, {v: Timing() for v in variants}
    for v in variants:
        try:
            runners[v] = TrainStep(cfg, v, state, x)
            timings[v].loss0 = runners[v]()
            for _ in range(max(warmup - 1, 0)):
                runners[v]()
        except Exception as exc:  # a variant this torch or machine cannot run is a row, not a crash
            timings[v].error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            runners.pop(v, None)
    for _ in range(steps):
        for v, run in runners.items():
            start, cpu, faults = time.perf_counter(), time.process_time(), _minor_faults()
            run()
            timings[v].seconds.append(time.perf_counter() - start)
            timings[v].cpu_seconds.append(time.process_time() - cpu)
            timings[v].faults.append(_minor_faults() - faults)
    return timings


def timing_rows(conf: Config, threads: int, timings: dict[str, Timing]) -> list[dict]:
    ref = next(iter(timings.values()))
    rows = []
    for v, t in timings.items():
        row = {"kind": "step", "variant": v, "threads": threads, "crop": conf.crop, "batch": conf.batch}
        if t.error or not t.seconds:
            rows.append(row | {"error": t.error or "not run"})
            continue
        q1, med, q3 = quartiles(t.seconds)
        row |= {"ms_per_step": 1000 * med, "q1_ms": 1000 * q1, "q3_ms": 1000 * q3, "pixels_per_s": conf.pixels / med}
        row["cpu_ms_per_step"] = 1000 * statistics.median(t.cpu_seconds)
        row["faults"] = int(statistics.median(t.faults))
        row["rounds_ms"] = [1000 * v for v in t.seconds]
        row["rounds_cpu_ms"] = [1000 * v for v in t.cpu_seconds]
        if ref.seconds and len(ref.seconds) == len(t.seconds):
            r1, r, r3 = quartiles([a / b for a, b in zip(t.seconds, ref.seconds, strict=True)])
            c1, c, c3 = quartiles([a / b for a, b in zip(t.cpu_seconds, ref.cpu_seconds, strict=True)])
            row |= {"ratio": r, "ratio_q1": r1, "ratio_q3": r3, "cpu_ratio": c, "cpu_ratio_q1": c1, "cpu_ratio_q3": c3}
        row["loss0"] = t.loss0
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Where the time goes

GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm"}
CONV_OPS = {
    "aten::convolution",
    "aten::_convolution",
    "aten::mkldnn_convolution",
    "aten::convolution_backward",
    "aten::conv2d",
    "aten::_slow_conv2d_forward",
    "aten::_slow_conv2d_backward",
    "aten::thnn_conv2d",
    "aten::_nnpack_spatial_convolution",
    "aten::slow_conv_dilated2d",
}
COPY_OPS = {
    "aten::copy_",
    "aten::clone",
    "aten::contiguous",
    "aten::_to_copy",
    "aten::fill_",
    "aten::zero_",
    "aten::constant_pad_nd",
    "aten::cat",
    "aten::stack",
}
GEMM, EMBED = "GEMM (linear layers)", "embed conv (3x3) fwd+bwd"
DW_FWD, DW_BWD = "depth-wise conv forward", "depth-wise conv backward"
GELU, NORM, COPIES = "GELU fwd+bwd", "layer norm fwd+bwd", "copies and fills"
OTHER, LOSS = "other element-wise (SiLU, gating, residuals, bias sums)", "mixture loss fwd+bwd"
CLIP, OPTIM, OVERHEAD = "gradient clipping", "optimizer (Adam, zero_grad)", "framework overhead (Python, autograd)"
CATEGORIES = (GEMM, DW_FWD, DW_BWD, EMBED, GELU, NORM, COPIES, OTHER, LOSS, CLIP, OPTIM, OVERHEAD)


def _ancestors(event) -> Iterator:
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def _is_embed(event) -> bool:
    """A convolution whose input (forward) or saved input (backward) has 3 channels: the embedding."""
    shapes = [s for s in (event.input_shapes or []) if isinstance(s, list) and len(s) == 4]
    return any(s[1] == 3 for s in shapes)


def _model_category(event, backward: bool, node: str) -> str:
    """The category of an op of the model's forward or backward (``node``: the autograd node running it)."""
    name = event.name
    dw_node = "Depthwise" in node  # codec.mgcf.model's own depth-wise backward runs convolutions as forward ops
    if name in CONV_OPS or dw_node:
        if any(_is_embed(e) for e in (event, *_ancestors(event)) if e.name in CONV_OPS):
            return EMBED
        return DW_BWD if backward or dw_node else DW_FWD
    if name in GEMM_OPS:
        return GEMM
    if "gelu" in name:
        return GELU
    if "layer_norm" in name:
        return NORM
    return COPIES if name in COPY_OPS else OTHER


def categorize(event, loss_done_us: float | None) -> str:
    """The category of one op's self time, from its name and what encloses it (the bench's
    sections, the autograd node, and for the backward whether the loss's part was over)."""
    sections = [a.name[len(SECTION) :] for a in _ancestors(event) if a.name.startswith(SECTION)]
    nodes = [a.name.split(": ", 1)[1] for a in _ancestors(event) if a.name.startswith("autograd::engine::evaluate_")]
    if event.name.startswith((SECTION, "autograd::engine::evaluate_")) or not sections:
        return OVERHEAD
    section = sections[0]
    if section in ("optimizer", "clip"):
        return OPTIM if section == "optimizer" else CLIP
    in_loss_backward = loss_done_us is not None and event.time_range.start < loss_done_us
    if section == "loss" or (section == "backward" and in_loss_backward):
        return LOSS
    return _model_category(event, section == "backward", nodes[0] if nodes else "")


def breakdown(cfg: MGCFConfig, conf: Config, variant: str, threads: int, steps: int) -> list[dict]:
    """Self CPU time per category, per step, over ``steps`` profiled steps (after two warm-up steps)."""
    run = TrainStep(cfg, variant, MGCF(cfg).state_dict(), make_batch(conf.crop, conf.batch))
    run()
    run()
    totals = dict.fromkeys(CATEGORIES, 0.0)
    wall = 0.0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            start = time.perf_counter()
            run(marker=True)
            wall += time.perf_counter() - start
    events = prof.events()
    marks = sorted(e.time_range.start for e in events if e.name == SECTION + "loss_backward_done")
    steps_start = sorted(e.time_range.start for e in events if e.name == SECTION + "forward")
    for event in events:
        # the loss-backward marker of the step this event belongs to
        done = None
        for begin, mark in zip(steps_start, marks, strict=False):
            if begin <= event.time_range.start:
                done = mark
        totals[categorize(event, done)] += event.self_cpu_time_total / 1000.0
    profiled = sum(totals.values())
    rows = []
    for cat, ms in totals.items():
        rows.append(
            {
                "kind": "profile",
                "variant": variant,
                "threads": threads,
                "crop": conf.crop,
                "batch": conf.batch,
                "category": cat,
                "ms_per_step": ms / steps,
                "share": ms / profiled if profiled else 0.0,
            }
        )
    rows.append(
        {
            "kind": "profile",
            "variant": variant,
            "threads": threads,
            "crop": conf.crop,
            "batch": conf.batch,
            "category": "wall time per profiled step",
            "ms_per_step": 1000 * wall / steps,
            "share": math.nan,
        }
    )
    return rows


# ---------------------------------------------------------------------------------------------
# One process per core, DistributedDataParallel over gloo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(
    rank: int,
    world: int,
    port: int,
    cfg_json: str,
    conf: tuple[int, int],
    threads: int,
    steps: int,
    warmup: int,
    out: str,
) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = MGCFConfig.from_json(cfg_json)
        torch.manual_seed(0)
        crop, batch = conf
        run = TrainStep(cfg, "base", MGCF(cfg).state_dict(), make_batch(crop, batch // world, seed=rank), ddp=True)
        for _ in range(warmup):
            run()
        seconds = []
        for _ in range(steps):
            dist.barrier()
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
        if rank == 0:
            Path(out).write_text(json.dumps(seconds))
    finally:
        dist.destroy_process_group()


def ddp_row(cfg: MGCFConfig, conf: Config, world: int, threads: int, steps: int, warmup: int) -> dict:
    row = {
        "kind": "step",
        "variant": f"ddp{world}",
        "threads": threads,
        "processes": world,
        "crop": conf.crop,
        "batch": conf.batch,
    }
    if conf.batch % world:
        return row | {"error": f"batch {conf.batch} does not split over {world} processes"}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "seconds.json")
        args = (world, _free_port(), cfg.to_json(), (conf.crop, conf.batch), threads, steps, warmup, out)
        torch.multiprocessing.spawn(_ddp_worker, args=args, nprocs=world, join=True)
        seconds = json.loads(Path(out).read_text())
    q1, med, q3 = quartiles(seconds)
    return row | {"ms_per_step": 1000 * med, "q1_ms": 1000 * q1, "q3_ms": 1000 * q3, "pixels_per_s": conf.pixels / med}


# ---------------------------------------------------------------------------------------------
# Output


def format_row(row: dict) -> str:
    head = f"{row['variant']:>10} {row['threads']:>3} {row['crop']:>4}x{row['batch']:<3}"
    if row["kind"] == "profile":
        share = "" if math.isnan(row["share"]) else f"{100 * row['share']:5.1f}%"
        return f"{head} {row['ms_per_step']:9.1f} ms {share:>6}  {row['category']}"
    if "error" in row:
        return f"{head} {row['error']}"
    text = (
        f"{head} {row['ms_per_step']:9.1f} [{row['q1_ms']:.1f}, {row['q3_ms']:.1f}] ms {row['pixels_per_s']:11.0f} px/s"
    )
    if "cpu_ms_per_step" in row:
        text += f"  cpu {row['cpu_ms_per_step']:.1f} ms  faults {row['faults']}"
    if "ratio" in row:
        text += f"  ratio {row['ratio']:.3f} [{row['ratio_q1']:.3f}, {row['ratio_q3']:.3f}]"
        text += f" cpu {row['cpu_ratio']:.3f} [{row['cpu_ratio_q1']:.3f}, {row['cpu_ratio_q3']:.3f}]"
    if "loss0" in row:
        text += f"  loss0 {row['loss0']:.6f}"
    return text


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    return (
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average (1 min) {load:.2f} at start; "
        f"ms/step: median [quartiles]"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="64x4,64x8,64x16,128x2,128x4", help="CROPxBATCH,... (default %(default)s)")
    ap.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2 (default %(default)s)")
    ap.add_argument("--steps", type=int, default=10, help="timed rounds per variant (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (default %(default)s)")
    ap.add_argument("--variants", default="base", help=f"comma-separated, first = reference; of {','.join(VARIANTS)}")
    ap.add_argument("--profile", default="", help="variants to break down with torch.profiler")
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--ddp", type=int, default=0, help="also N processes with DDP over gloo (0: no)")
    ap.add_argument("--malloc-cache", action="store_true", help="keep freed memory in the process (see above)")
    ap.add_argument("--tiny", action="store_true", help="MGCFConfig.tiny() instead of the paper's configuration")
    ap.add_argument("--json", help="also write the rows as a JSON list to this file")
    args = ap.parse_args(argv)
    args.configs = [Config.parse(c) for c in args.configs.split(",") if c]
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.variants = [v for v in args.variants.split(",") if v]
    args.profile = [v for v in args.profile.split(",") if v]
    unknown = sorted(set(args.variants + args.profile) - set(VARIANTS))
    if unknown or not args.variants or not args.threads or args.steps < 1:
        ap.error(f"unknown variants {unknown}" if unknown else "need variants, threads and steps >= 1")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    cfg = MGCFConfig.tiny() if args.tiny else MGCFConfig()
    if args.malloc_cache and not keep_freed_memory():
        raise SystemExit("--malloc-cache: no glibc mallopt here")
    torch.manual_seed(0)
    print(machine_line() + (", --malloc-cache" if args.malloc_cache else ""), flush=True)
    rows: list[dict] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for conf in args.configs:
            for row in timing_rows(conf, threads, interleaved(cfg, conf, args.variants, args.steps, args.warmup)):
                rows.append(row)
                print(format_row(row), flush=True)
            for variant in args.profile:
                for row in breakdown(cfg, conf, variant, threads, args.profile_steps):
                    rows.append(row)
                    print(format_row(row), flush=True)
    if args.ddp:
        for conf in args.configs:
            row = ddp_row(cfg, conf, args.ddp, args.threads[0], args.steps, args.warmup)
            rows.append(row)
            print(format_row(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
