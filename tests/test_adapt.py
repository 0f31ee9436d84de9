"""Per-image adaptation: adapters in the file, exact round trips, the RPFT schedule, batching."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import codec
import codec.api
from codec.errors import CorruptFileError, UnsupportedError
from codec.mgcf import adapters
from codec.mgcf.adapters import AdapterSet, AdapterSpec, decode_section, encode_section, factors, merge
from codec.mgcf.coder import with_adapters
from codec.mgcf.config import MGCFConfig
from codec.mgcf.rpft import AdaptConfig, fraction
from tests.conftest import assert_same_pixels

ADAPT = AdaptConfig(steps=8, lr=1e-2, min_pixels=0)  # small crops: adapted all the same
LEARNED = {"coder": "learned"}  # the learned coder's file, not the smaller of it and JPEG-XL's


@pytest.fixture(scope="module")
def image(samples) -> np.ndarray:
    return np.ascontiguousarray(samples["kodim23-crop"][:48, :72])


@pytest.fixture(scope="module")
def adapted_file(image, tiny_model):
    [(data, report)] = codec.api.encode_many([image], model=tiny_model, adapt=ADAPT, **LEARNED)
    return data, report


def random_adapters(cfg: MGCFConfig, spec: AdapterSpec, seed: int, limit: int = 5) -> AdapterSet:
    g = torch.Generator().manual_seed(seed)
    deltas = {f.name: torch.randint(-limit, limit + 1, f.shape, generator=g) for f in factors(cfg, spec)}
    return AdapterSet(spec, deltas)


def test_parameter_count_of_the_paper_model():
    assert adapters.parameter_count(MGCFConfig(), AdapterSpec()) == 13_592
    assert adapters.parameter_count(MGCFConfig(), AdapterSpec(4, (4, 3, 3))) == 27_058  # the paper's ~25K


def test_adapted_file_round_trips_and_counts_the_adapter_bits(image, adapted_file, tiny_model):
    data, report = adapted_file
    meta = codec.info(data)
    assert report.adapters == "kept" and meta["adapted"]
    assert meta["sections"]["ADPT"] == report.adapter_bytes > 0
    assert meta["bytes"] == len(data) == report.bytes  # the size includes the adapters
    assert meta["bits_per_subpixel"] == 8 * len(data) / image.size
    assert report.estimated_adapted_bits < report.estimated_base_bits
    assert set(report.timings) >= {"rate_estimate_s", "fine_tune_s", "exact_pass_s", "coding_s"}
    assert_same_pixels(codec.decode(data, model=tiny_model).pixels, image)
    assert_same_pixels(codec.decode(data).pixels, image)  # the model found by its hash


def test_adapters_make_the_file_smaller(image, adapted_file, tiny_model):
    plain = codec.encode(image, model=tiny_model, adapt=None, **LEARNED)
    assert len(adapted_file[0]) < len(plain)


def test_no_adaptation_means_no_adapter_section(image, tiny_model):
    plain = codec.encode(image, model=tiny_model, adapt=None, **LEARNED)
    zero = codec.encode(image, model=tiny_model, adapt=AdaptConfig(steps=0), **LEARNED)
    assert zero == plain
    assert not codec.info(zero)["adapted"] and "ADPT" not in codec.info(zero)["sections"]


def test_adapters_that_do_not_pay_are_dropped(image, tiny_model):
    # One step at a tiny learning rate changes (almost) nothing: the adapter bits cannot pay.
    [(data, report)] = codec.api.encode_many(
        [image], model=tiny_model, adapt=AdaptConfig(steps=1, lr=1e-6, min_pixels=0), verify=True, **LEARNED
    )
    assert report.adapters == "dropped" and report.adapter_bytes > 0
    assert data == codec.encode(image, model=tiny_model, adapt=None, **LEARNED)


def test_section_round_trip_is_exact(tiny_model):
    cfg, lut = tiny_model.exact.cfg, tiny_model.exact.luts["sigmoid"]
    for spec, limit in ((AdapterSpec(), 3), (AdapterSpec(3, (2, 1, 2)), 127)):
        a = random_adapters(cfg, spec, seed=limit, limit=limit)
        b = decode_section(cfg, encode_section(cfg, a, lut), lut)
        assert b.spec == spec
        assert all(torch.equal(a.deltas[k], b.deltas[k]) for k in a.deltas)


def test_sparse_adapters_cost_little(tiny_model):
    cfg, lut = tiny_model.exact.cfg, tiny_model.exact.luts["sigmoid"]
    spec = AdapterSpec()
    zero = AdapterSet(spec, {f.name: torch.zeros(f.shape, dtype=torch.int64) for f in factors(cfg, spec)})
    dense = random_adapters(cfg, AdapterSpec(), seed=1, limit=20)
    assert len(encode_section(cfg, zero, lut)) < 50 < len(encode_section(cfg, dense, lut))


def test_corrupt_or_foreign_sections_are_refused(tiny_model):
    cfg, lut = tiny_model.exact.cfg, tiny_model.exact.luts["sigmoid"]
    good = encode_section(cfg, random_adapters(cfg, AdapterSpec(), seed=2), lut)
    with pytest.raises(UnsupportedError):
        decode_section(cfg, b"\x09" + good[1:], lut)  # a later section version
    with pytest.raises(CorruptFileError):
        decode_section(cfg, good[:3], lut)
    with pytest.raises(CorruptFileError):
        decode_section(cfg, good[:1] + b"\x00" + good[2:], lut)  # LoRA rank 0
    with pytest.raises(CorruptFileError):
        decode_section(cfg, good[:6] + b"\x05" + good[7:], lut)  # wrong tensor count
    with pytest.raises(CorruptFileError):
        decode_section(cfg, good[:7] + b"\xff" + good[8:], lut)  # unknown prior scale
    with pytest.raises(CorruptFileError):
        decode_section(cfg, good + b"\x01", lut)  # stream not whole words


def test_damaged_adapter_values_never_give_wrong_pixels(image, adapted_file, tiny_model):
    from codec.container import parse

    data, _ = adapted_file
    container = parse(data, codec.api.KNOWN_CRITICAL)
    for i, (tag, payload) in enumerate(container.sections):
        if tag == b"ADPT":  # flip bits in the coded deltas, then re-seal the section's CRC
            damaged = bytearray(payload)
            damaged[len(damaged) // 2] ^= 0x5A
            container.sections[i] = (tag, bytes(damaged))
    with pytest.raises(codec.CallicError):
        codec.decode(container.to_bytes(), model=tiny_model)


def test_merge_is_integer_and_leaves_the_base_untouched(tiny_model):
    net = tiny_model.exact
    before = {k: v.clone() for k, v in net.t.items()}
    a = random_adapters(net.cfg, AdapterSpec(), seed=3)
    merged = merge(net.cfg, net.t, a)
    assert all(torch.equal(net.t[k], before[k]) for k in before)
    changed = [k for k in merged if not torch.equal(merged[k], before[k])]
    assert {k.rsplit(".", 2)[-2] for k in changed} == {"gate_a", "gate_v", "gate_o", "fc1", "fc2", "dw", "head"}
    assert all(torch.equal(v, v.round()) for v in merged.values())
    # Merging on another thread count or twice gives the same integers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    again = merge(net.cfg, net.t, a)
    torch.set_num_threads(threads)
    assert all(torch.equal(merged[k], again[k]) for k in merged)


def test_adapters_too_large_for_the_exact_path_are_refused(tiny_model):
    net = tiny_model.exact
    huge = AdapterSet(AdapterSpec(), {f.name: torch.full(f.shape, 127) for f in factors(net.cfg, AdapterSpec())})
    huge.deltas["head.down"] = huge.deltas["head.down"] * 2**40
    with pytest.raises(ValueError):
        with_adapters(net, huge)


def test_fraction_schedule():
    cfg = AdaptConfig(steps=50, b=0.2, d=0.1, e=1.0)
    values = [fraction(t, cfg) for t in range(50)]
    assert values[0] == pytest.approx(0.2)
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    assert fraction(45, cfg) == 1.0 and values[-1] == 1.0  # full from t = T (1 - d) on
    x = 22 / 45
    assert fraction(22, cfg) == pytest.approx(0.2 + 0.8 * x * x * (3 - 2 * x))  # smoothstep
    assert fraction(22, AdaptConfig(steps=50, e=2.0)) < fraction(22, cfg)
    assert fraction(0, AdaptConfig(steps=50, order="all")) == 1.0


def test_rate_order_trains_on_the_costliest_patches_first(tiny_model, monkeypatch):
    from codec.mgcf import rpft

    seen = []
    real_run = rpft._run

    def spy(model, ad, batch, which, passes, grad_scale=None, **options):
        out = real_run(model, ad, batch, which, passes, grad_scale, **options)
        if ad is None:
            seen.append(("estimate", out.clone()))
        elif grad_scale is not None:
            seen.append(("train", which.clone()))
        return out

    monkeypatch.setattr(rpft, "_run", spy)
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    img[8:] //= 16  # 25 patches of mixed cost
    rpft.adapt(tiny_model.float_model("cpu"), [img], AdaptConfig(steps=2, b=0.12))
    estimate, first = seen[0][1], seen[1][1]
    assert first.tolist() == estimate.topk(3).indices.tolist()  # F(0) = 0.12: 3 of 25, costliest first
    assert seen[2][1].tolist()[:3] == first.tolist()


@pytest.mark.parametrize("mixed", [False, True])  # passes of one image (CPU default) or mixed (GPU default)
def test_batched_adaptation_matches_one_by_one(samples, tiny_model, mixed):
    images = [np.ascontiguousarray(samples[n][:40, :56]) for n in ("kodim23-crop", "coffee-crop", "monarch-crop")]
    images[1] = np.ascontiguousarray(images[1][:24, :40])  # sizes differ
    batched = dataclasses.replace(ADAPT, mixed_passes=mixed, chunk_patches=4)  # passes cross images
    together = codec.api.encode_many(images, model=tiny_model, adapt=batched, **LEARNED)
    for img, (data, report) in zip(images, together, strict=True):
        [(alone, alone_report)] = codec.api.encode_many([img], model=tiny_model, adapt=ADAPT, **LEARNED)
        assert report.adapters == alone_report.adapters
        assert abs(len(data) - len(alone)) <= max(8, len(alone) // 200)  # float noise of fine-tuning only
        assert report.estimated_adapted_bits == pytest.approx(alone_report.estimated_adapted_bits, rel=1e-4)
        assert_same_pixels(codec.decode(data, model=tiny_model).pixels, img)


@pytest.mark.parametrize("order", ["random", "all"])
def test_ablation_orders_round_trip(image, tiny_model, order):
    cfg = AdaptConfig(steps=3, lr=1e-2, order=order, max_patches=2, min_pixels=0)
    data = codec.encode(image, model=tiny_model, adapt=cfg, verify=True, **LEARNED)
    assert codec.info(data)["coder"] == "mgcf"
    assert_same_pixels(codec.decode(data).pixels, image)


def test_one_update_for_the_batch_equals_the_same_update_per_sample(tiny_model):
    from codec.mgcf import rpft

    net = tiny_model.float_model("cpu")
    ad = rpft.ImageAdapters(net, AdapterSpec(), 1)
    with torch.no_grad():
        for i, d in enumerate(ad.delta):
            d.copy_(torch.randn(d.shape, generator=torch.Generator().manual_seed(i)) * 20 * adapters.STEP)
        x = torch.randint(0, 256, (3, 3, 16, 16)).float()
        merged = net(x, ad.patch_deltas(torch.zeros(1, dtype=torch.long)))
        per_sample = net(x, ad.patch_deltas(torch.zeros(3, dtype=torch.long)))
        plain = net(x)
    assert torch.allclose(merged, per_sample, atol=1e-4)
    assert not torch.allclose(merged, plain, atol=1e-2)  # the update does change the output


def test_cpu_passes_hold_one_image_each():
    from codec.mgcf.rpft import _chunks

    image = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    which = torch.tensor([2, 0, 1, 4, 3, 5, 6, 7, 8])
    per_image = [c.tolist() for c in _chunks(which, image, 2, mixed=False)]
    assert per_image == [[2, 0], [1], [4, 3], [5, 6], [7, 8]]
    assert [c.tolist() for c in _chunks(which, image, 4, mixed=True)] == [[2, 0, 1, 4], [3, 5, 6, 7], [8]]


def test_frozen_layers_keep_zero_deltas_and_round_trip(image, tiny_model):
    """Adapting the head only (``AdaptConfig.layers``; the tiny model has one block, so ``last``
    is ``all``): the frozen layers' deltas stay zero, the head's move, and the file decodes
    exactly."""
    from codec.mgcf import rpft

    depth = tiny_model.exact.cfg.depth
    assert AdaptConfig(layers="last").first_block(depth) == depth - 1 == AdaptConfig().first_block(depth)
    cfg = dataclasses.replace(ADAPT, layers="head")
    first_block = cfg.first_block(depth)
    assert first_block == depth
    [out] = rpft.adapt(tiny_model.float_model("cpu"), [image], cfg)
    moved = {name for name, d in out.adapters.deltas.items() if d.any()}
    assert moved, "nothing was adapted"
    assert all(rpft._block_of(name, depth) >= first_block for name in moved), moved
    [(data, report)] = codec.api.encode_many([image], model=tiny_model, adapt=cfg, verify=True, **LEARNED)
    assert report.adapters == "kept"
    assert_same_pixels(codec.decode(data, model=tiny_model).pixels, image)


def test_kept_trunk_features_give_what_recomputing_them_gives(image, tiny_model, monkeypatch):
    """The frozen layers' outputs are kept per patch within a budget; without any budget they are
    recomputed every pass: the same adapters either way (up to float rounding of the batching)."""
    from codec.mgcf import rpft

    cfg = dataclasses.replace(ADAPT, layers="head", max_patches=3)
    net = tiny_model.float_model("cpu")
    [kept] = rpft.adapt(net, [image], cfg)
    monkeypatch.setattr(rpft, "FEATURE_CACHE_BYTES", 0)
    [recomputed] = rpft.adapt(net, [image], cfg)
    assert recomputed.base_bits == pytest.approx(kept.base_bits, rel=1e-5)
    assert recomputed.adapted_bits == pytest.approx(kept.adapted_bits, rel=1e-4)
    differ = sum(int((kept.adapters.deltas[k] != recomputed.adapters.deltas[k]).sum()) for k in kept.adapters.deltas)
    assert differ <= 2  # a delta on a rounding edge may flip


def test_unknown_layers_are_refused():
    with pytest.raises(ValueError, match="layers"):
        AdaptConfig(layers="first")


def test_steps_become_a_budget_with_early_stopping(image, tiny_model):
    """``stop_below``: fine-tuning ends once the estimated gain stops growing by that share of the
    image's bits over ``STOP_PATIENCE`` steps; 0 runs every step. The stopped adapters still make
    a file that decodes exactly, and the report counts the steps that ran."""
    from codec.mgcf import rpft

    net = tiny_model.float_model("cpu")
    budget = dataclasses.replace(ADAPT, steps=12)
    [full] = rpft.adapt(net, [image], budget)
    assert full.steps == 12
    never = dataclasses.replace(budget, stop_below=0.9)  # no step gains 90% of the image
    [stopped] = rpft.adapt(net, [image], never)
    assert stopped.steps == rpft.STOP_PATIENCE + 1
    [(data, report)] = codec.api.encode_many([image], model=tiny_model, adapt=never, verify=True, **LEARNED)
    assert report.steps == rpft.STOP_PATIENCE + 1
    assert_same_pixels(codec.decode(data, model=tiny_model).pixels, image)
    with pytest.raises(ValueError, match="stop_below"):
        AdaptConfig(stop_below=-0.1)
