"""Files that claim more work or memory than they can justify are refused quickly and cleanly.

The crafted files in ``tests/hostile`` are made by ``tests/hostile/craft.py`` (regenerate them
with ``python -m tests.hostile.craft``). Each is decoded in a fresh child process, so that its
time and peak memory (``ru_maxrss`` from ``os.wait4``) are its own; the bounds are generous (the
child's imports alone take about 0.25 GB), the error class is what matters.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import codec
from codec import defaults
from codec.container import Container
from codec.defaults import patches_per_stream
from codec.entropy import Decoder, Encoder
from codec.errors import CorruptFileError, UnsupportedError
from codec.fixedpoint import build_luts
from codec.header import read_header
from codec.mgcf import learned
from codec.mgcf.config import MGCFConfig
from codec.mgcf.exact import ExactMGCF, StepDecoder
from codec.mgcf.mixture import LOG_SCALE_MAX, LOG_SCALE_MIN
from codec.mgcf.quantize import exact_tensors
from codec.mgcf.wavefront import num_steps
from tests.conftest import assert_same_pixels, make_model
from tests.hostile import craft

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ROOT / "tests" / "hostile"
MAX_SECONDS = 5.0
MAX_RSS_MB = 1024
CHILD_TIMEOUT = 120
CHILD_AS_LIMIT = 8 << 30

_CHILD = """
import json, sys, time
start = time.perf_counter()
import codec
import codec.api  # `import codec` is lazy: load torch and the decoder before the clock starts
from codec.errors import CallicError
t0 = time.perf_counter()
try:
    codec.decode(open(sys.argv[1], "rb").read())
    result = "decoded"
except CallicError as exc:
    result = type(exc).__name__ + ": " + str(exc)
print(json.dumps({"result": result, "decode_s": time.perf_counter() - t0}))
"""


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_AS_LIMIT, CHILD_AS_LIMIT))


def decode_in_child(path: Path, env: dict[str, str] | None = None) -> tuple[str, float, float]:
    """(outcome, seconds decoding, peak RSS in MB) of ``codec.decode`` on ``path`` in a fresh
    process, killed after ``CHILD_TIMEOUT`` s and held to ``CHILD_AS_LIMIT`` bytes of address space
    (a decoder without bounds must fail this test, not take the machine)."""
    child_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env,
        preexec_fn=_limit_memory,
    )
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not (waited := os.wait4(proc.pid, os.WNOHANG))[0]:  # wait4: this child's own peak RSS
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{path.name}: still decoding after {CHILD_TIMEOUT} s")
        time.sleep(0.02)
    _, status, usage = waited
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == 0, f"decoder crashed: {err.decode()[-2000:]}"
    report = json.loads(out.decode().strip().splitlines()[-1])
    return report["result"], report["decode_s"], usage.ru_maxrss / 1024


def test_stored_fixtures_are_what_craft_makes():
    stored = (HOSTILE / "mgcf_4096x4096_one_segment.cllc").read_bytes()
    model_hash = read_header(stored)[0].model_hash
    for name, data in craft.build(model_hash).items():
        assert (HOSTILE / name).read_bytes() == data, f"{name} is stale: run python -m tests.hostile.craft"
    assert len(stored) == 137
    header, container = read_header((HOSTILE / craft.JXL_FIXTURE).read_bytes())
    assert header.shape == (8, 8) and craft.jxl_claimed_side(container.require(b"DATA")) == 16384


@pytest.mark.parametrize(
    "name,error,words",
    [
        ("mgcf_4096x4096_one_segment.cllc", "UnsupportedError", "CALLIC_DECODER_MEMORY"),
        ("mgcf_18000x18000_empty_streams.cllc", "CorruptFileError", "stream 0 holds 0 bytes"),
        ("mgcf_18000x18000_one_word_streams.cllc", "CorruptFileError", "ends before its last symbol"),
        (craft.JXL_FIXTURE, "CorruptFileError", "JPEG-XL payload does not decode to (8, 8)"),
    ],
)
def test_crafted_files_are_refused_fast_in_little_memory(name, error, words):
    outcome, seconds, rss_mb = decode_in_child(HOSTILE / name)
    assert outcome.startswith(error + ":") and words in outcome, outcome
    assert seconds < MAX_SECONDS, f"{name}: refused after {seconds:.1f} s"
    assert rss_mb < MAX_RSS_MB, f"{name}: peak RSS {rss_mb:.0f} MB"


def test_the_budget_is_read_from_the_environment():
    """A budget large enough for the 4096-patch segment lets the decoder past the memory check,
    and the empty stream is then what refuses the file."""
    env = {"CALLIC_DECODER_MEMORY": str(1 << 40)}
    outcome, _, _ = decode_in_child(HOSTILE / "mgcf_4096x4096_one_segment.cllc", env)
    assert outcome.startswith("CorruptFileError:") and "0 bytes" in outcome, outcome


def test_segments_are_held_to_the_budget(tiny_model, monkeypatch):
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)  # 25 patches of 8 x 8
    data = codec.encode(img, model=tiny_model, adapt=None, coder="learned", patches_per_stream=25)
    per_patch = tiny_model.exact.cache_bytes_per_patch()
    monkeypatch.setattr(defaults, "DECODER_BATCH_BYTES", 24 * per_patch)
    with pytest.raises(UnsupportedError, match="CALLIC_DECODER_MEMORY"):
        codec.decode(data)
    with pytest.raises(UnsupportedError, match="fewer patches per stream"):
        codec.encode(img, model=tiny_model, adapt=None, coder="learned", patches_per_stream=25)
    sizes = []
    monkeypatch.setattr(defaults, "DECODER_BATCH_BYTES", 25 * per_patch)
    real_step_decoder = ExactMGCF.step_decoder
    monkeypatch.setattr(ExactMGCF, "step_decoder", lambda self, n: sizes.append(n) or real_step_decoder(self, n))
    assert_same_pixels(codec.decode(data).pixels, img)
    small = codec.encode(img, model=tiny_model, adapt=None, coder="learned", patches_per_stream=4)
    sizes.clear()
    assert_same_pixels(codec.decode(small).pixels, img)
    assert max(sizes) <= 25 and sum(sizes) == 25, sizes  # max_patches never overrides the budget


def test_the_encoder_writes_no_file_the_default_decoder_refuses():
    """The shipped model's patches take 12.6 MB of caches each: 256 of them do not fit 2 GiB."""
    shipped = codec.load_model()
    img = np.zeros((1024, 1024, 3), np.uint8)  # 256 patches of 64 x 64
    with pytest.raises(UnsupportedError, match="fewer patches per stream"):
        codec.encode(img, model=shipped, patches_per_stream=256, adapt=None, coder="learned")
    fits = defaults.DEFAULT_DECODER_MEMORY // shipped.exact.cache_bytes_per_patch()
    learned.check_segment_memory(1024, 1024, shipped.exact, fits, defaults.DEFAULT_DECODER_MEMORY)
    assert fits >= patches_per_stream(shipped.exact.cfg.patch)  # bigger patches: tests/test_patch_size.py


def _legit_streams(tiny_model, shape=(37, 45), per_stream=4, seed=1):
    img = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    return img, learned.encode_rgb(img, tiny_model.exact, per_stream)


def test_a_truncated_stream_fails_at_the_step_where_it_runs_out(tiny_model, monkeypatch):
    img, streams = _legit_streams(tiny_model)
    steps = []
    real_params = StepDecoder.params
    monkeypatch.setattr(StepDecoder, "params", lambda self, step: steps.append(step) or real_params(self, step))
    cut = [streams[0][:4], *streams[1:]]
    with pytest.raises(CorruptFileError, match="ends before its last symbol"):
        learned.decode_rgb(cut, *img.shape[:2], tiny_model.exact, 4)
    assert max(steps) < num_steps(8, 8) // 2, steps  # long before the segment's 22 steps
    with pytest.raises(CorruptFileError, match="stream 2 holds 0 bytes"):
        learned.decode_rgb([*streams[:2], b"", *streams[3:]], *img.shape[:2], tiny_model.exact, 4)


@pytest.mark.parametrize("shape,per_stream", [((1, 1), 1), ((1, 9), 1), ((9, 1), 64), ((17, 23), 1), ((20, 30), 4096)])
def test_small_and_many_segment_images_still_round_trip(tiny_model, shape, per_stream):
    img = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    data = codec.encode(img, model=tiny_model, adapt=None, coder="learned", patches_per_stream=per_stream)
    assert_same_pixels(codec.decode(data).pixels, img)
    flat = np.full((*shape, 3), 128, np.uint8)  # the most predictable image: streams of one word
    flat_file = codec.encode(flat, model=tiny_model, adapt=None, coder="learned", patches_per_stream=per_stream)
    assert_same_pixels(codec.decode(flat_file).pixels, flat)


def _random_tables(rng: np.random.Generator, n: int, sharp: bool) -> torch.Tensor:
    q = rng.random((n, 256)) ** (40 if sharp else 1)
    q = np.floor(q / q.sum(1, keepdims=True) * (2**24 - 256))
    q[np.arange(n), q.argmax(1)] += (2**24 - 256) - q.sum(1)
    return torch.from_numpy(q)


@pytest.mark.parametrize("sharp", [False, True])
def test_legitimate_streams_never_trip_the_information_bound(sharp):
    rng = np.random.default_rng(int(sharp))
    for n in (1, 2, 7, 300):
        tables = _random_tables(rng, n, sharp)
        symbols = torch.from_numpy(np.array([rng.choice(256, p=t / t.sum()) for t in tables.numpy()]))
        enc = Encoder()
        enc.encode(symbols, tables)
        dec = Decoder(enc.finish())
        assert torch.equal(torch.cat([dec.decode(tables[i : i + 1]) for i in range(n)]), symbols)


def test_decoding_past_the_end_raises_instead_of_inventing_symbols():
    rng = np.random.default_rng(3)
    tables = _random_tables(rng, 50, sharp=False)
    enc = Encoder()
    enc.encode(torch.zeros(50, dtype=torch.int64), tables)
    dec = Decoder(enc.finish())
    dec.decode(tables)
    with pytest.raises(CorruptFileError, match="ends before its last symbol"):
        for _ in range(20):
            dec.decode(tables[:5])
    with pytest.raises(CorruptFileError, match="ends before its last symbol"):
        Decoder(b"").decode(tables)


def test_step_decoder_never_reads_a_cache_row_before_writing_it():
    """The caches come from ``torch.empty``; filled with NaN, any early read would show."""
    cfg = MGCFConfig.tiny()
    exact = ExactMGCF(cfg, exact_tensors(make_model(cfg, 4)), build_luts(LOG_SCALE_MIN, LOG_SCALE_MAX))
    patches = torch.randint(0, 256, (2, cfg.patch, cfg.patch, 3), generator=torch.Generator().manual_seed(4))
    full = exact.full_params(patches)
    state = exact.step_decoder(2)
    for cache in state.caches:
        cache[: state.zero_row] = float("nan")
    for step in range(num_steps(cfg.patch, cfg.patch)):
        params = state.params(step)
        rows, cols = state.positions(step)
        assert torch.equal(params, full[:, rows, cols]), step  # NaN equals nothing
        state.set_pixels(step, patches[:, rows, cols])


def test_an_alpha_plane_claiming_a_huge_image_is_refused(tiny_model):
    rgba = np.random.default_rng(2).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    data = codec.encode(rgba, model=tiny_model, adapt=None, coder="learned")
    header, container = read_header(data)
    huge = read_header((HOSTILE / craft.JXL_FIXTURE).read_bytes())[1].require(b"DATA")
    rebuilt = Container()
    for tag, payload in container.sections:
        rebuilt.add(tag, huge if tag == b"ALPH" else payload)
    with pytest.raises(CorruptFileError, match="JPEG-XL payload does not decode"):
        codec.decode(rebuilt.to_bytes())


def test_a_small_fuzz_run_finds_nothing_bad():
    """``bench/fuzz_cllc.py`` in small: every mutated file (valid CRCs) is exact or refused cleanly."""
    from bench import fuzz_cllc

    summary = fuzz_cllc.run(cases=120, seed=7, timeout=30.0)
    assert summary.cases == 120 and not summary.bad, summary.bad
    assert summary.counts["exact"] > 0 and summary.counts["rejected"] > 0, summary.counts
    assert summary.worst_seconds < 10, summary.worst_seconds_case
