"""Training crops and validation tiles by source group (``jobs.trainsets``), and the per-group
validation columns of ``callic train``'s log."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codec.errors import CallicError
from codec.mgcf.config import MGCFConfig
from codec.mgcf.model import MGCF
from jobs.objectives import MGCFObjective
from jobs.train import TrainConfig, train_loop
from jobs.trainsets import crop_mix, group_from_name, load_rgb_images, step_crops, validation_tiles

from .conftest import assert_same_pixels


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def noise(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def manifest(folder: Path, groups: dict[str, str]) -> None:
    images = [
        {"file": f, "sha256": "0" * 64, "width": 1, "height": 1, "source": "x", "group": g} for f, g in groups.items()
    ]
    (folder / "manifest.json").write_text(json.dumps({"name": folder.name, "images": images}))


def test_groups_come_from_the_manifest_then_the_file_name(tmp_path):
    data = tmp_path / "data"
    pixels = {name: noise(i, 20 + i, 24) for i, name in enumerate(["a.png", "b-1.png", "c-2.png", "plain.png"])}
    for name, px in pixels.items():
        write_png(data / name, px)
    write_png(data / "tiny-1.png", noise(9, 4, 4))  # smaller than min_side: left out
    write_png(data / "sub" / "d-3.png", noise(7, 16, 16))  # a subfolder without manifest
    manifest(data, {"a.png": "Mate Wallpapers!", "b-1.png": "bbc"})  # c-2 and plain.png unlisted
    groups = load_rgb_images(str(data), min_side=16)
    assert list(groups) == sorted(groups) == ["bbc", "c", "d", "mate_wallpapers", "other"]
    assert_same_pixels(groups["mate_wallpapers"][0], pixels["a.png"])
    assert_same_pixels(groups["bbc"][0], pixels["b-1.png"])
    assert_same_pixels(groups["other"][0], pixels["plain.png"])
    assert [g.shape for g in groups["d"]] == [(16, 16, 3)]
    assert group_from_name("bbc-trees-1x.png") == "bbc" and group_from_name("-x.png") == "other"


def test_a_manifest_json_that_is_not_ours_is_ignored_and_a_huge_one_refused(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_png(data / "p-1.png", noise(0, 16, 16))
    (data / "manifest.json").write_text('["another tool\'s file"]')
    assert list(load_rgb_images(str(data), 8)) == ["p"]
    (data / "manifest.json").write_text("{not json")
    assert list(load_rgb_images(str(data), 8)) == ["p"]
    monkeypatch.setattr("jobs.trainsets.MAX_MANIFEST_BYTES", 4)
    with pytest.raises(CallicError, match="manifest.json"):
        load_rgb_images(str(data), 8)


def constant_groups() -> dict[str, list[np.ndarray]]:
    """Three groups of very different sizes, every pixel of group k holding the value k * 40 + i
    (i: the image), so a crop tells where it came from."""
    sizes = {"big": [(400, 300)], "many": [(20, 20)] * 6, "one": [(30, 40)]}
    return {
        g: [np.full((h, w, 3), k * 40 + i, np.uint8) for i, (h, w) in enumerate(shapes)]
        for k, (g, shapes) in enumerate(sizes.items())
    }


def test_the_mix_visits_every_group_by_the_square_root_of_its_pixels():
    groups = constant_groups()
    mix = crop_mix(groups)
    # isqrt of the pixels: 120,000 -> 346, 6 x 400 -> 48, 1,200 -> 34 (uniform over images: 1/8, 6/8, 1/8)
    assert mix == pytest.approx({"big": 346 / 428, "many": 48 / 428, "one": 34 / 428})
    counts = {"big": 0, "many": 0, "one": 0}
    seen_images = set()
    for step in range(250):
        x = step_crops(groups, 8, 16, seed=0, rank=0, step=step)
        assert x.shape == (8, 3, 16, 16) and x.dtype == torch.uint8
        for crop in x:
            value = int(crop[0, 0, 0])
            assert torch.all(crop == value)  # one image per crop
            counts[["big", "many", "one"][value // 40]] += 1
            seen_images.add(value)
    assert seen_images == {0, 40, 41, 42, 43, 44, 45, 80}  # every image of every group
    for g, n in counts.items():
        assert abs(n / 2000 - mix[g]) < 0.03, (g, n, mix)


def test_crops_are_a_pure_function_of_seed_rank_step_and_images():
    groups = {"a": [noise(0, 20, 30)], "b": [noise(1, 25, 18), noise(2, 16, 16)]}
    x = step_crops(groups, 6, 8, seed=3, rank=1, step=5)
    assert torch.equal(x, step_crops({"b": groups["b"], "a": groups["a"]}, 6, 8, seed=3, rank=1, step=5))
    assert not torch.equal(x, step_crops(groups, 6, 8, seed=3, rank=0, step=5))
    assert step_crops([noise(0, 20, 30)], 2, 8, 0, 0, 0).shape == (2, 3, 8, 8)  # a plain list: one group


def test_validation_takes_a_fixed_number_of_tiles_per_group():
    groups = {"a": [noise(0, 64, 64)], "b": [noise(1, 16, 80), noise(2, 32, 16)], "c": [noise(3, 16, 16)]}
    tiles = validation_tiles(groups, 9, 16)
    assert tiles.groups == ("a",) * 3 + ("b",) * 3 + ("c",)  # c has one tile position only
    assert tiles.pixels.shape == (7, 3, 16, 16) and tiles.pixels.dtype == torch.uint8
    first_a = tiles.pixels[0].permute(1, 2, 0).numpy()
    assert_same_pixels(first_a, groups["a"][0][:16, :16])
    last_b = tiles.pixels[5].permute(1, 2, 0).numpy()
    assert_same_pixels(last_b, groups["b"][1][16:32, :16])
    assert torch.equal(validation_tiles(groups, 9, 16).pixels, tiles.pixels)  # fixed tiles


def test_validation_reports_each_group_and_their_mean():
    torch.manual_seed(0)
    model = MGCF(MGCFConfig.tiny()).eval()
    tiles = validation_tiles({"a": [noise(0, 16, 32)], "b": [noise(1, 8, 8)], "z": [noise(2, 8, 16)]}, 6, 8)
    objective = MGCFObjective(TrainConfig(data="x", config="tiny"))
    val = objective.validate(model, tiles.pixels, torch.device("cpu"), tiles.groups)
    assert set(val) == {"val_bpsp", "val_bpsp_a", "val_bpsp_b", "val_bpsp_z"}
    counts = {g: tiles.groups.count(g) for g in "abz"}
    mean = sum(val[f"val_bpsp_{g}"] * n for g, n in counts.items()) / sum(counts.values())
    assert val["val_bpsp"] == pytest.approx(mean, rel=1e-6)
    alone = objective.validate(model, tiles.pixels[:2], torch.device("cpu"), tiles.groups[:2])
    assert alone["val_bpsp_a"] == pytest.approx(val["val_bpsp_a"], rel=1e-6)
    assert set(objective.validate(model, tiles.pixels, torch.device("cpu"))) == {"val_bpsp"}


def read_log(out: Path) -> tuple[list[str], list[dict]]:
    with open(out / "log.csv") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def run_config(tmp_path: Path, val: Path, **kw) -> dict:
    base = TrainConfig(
        data=str(val),
        val=str(val),
        out=str(tmp_path / "run"),
        config="tiny",
        steps=4,
        batch=2,
        warmup=1,
        val_every=2,
        val_tiles=4,
        threads=1,
        device="cpu",
        quiet=True,
    )
    return dataclasses.asdict(dataclasses.replace(base, **kw))


def test_the_log_has_a_column_per_group_and_resumes_with_the_same_ones(tmp_path):
    val = tmp_path / "val"
    for name, seed in (("bbc-1.png", 0), ("mate-1.png", 1), ("mate-2.png", 2)):
        write_png(val / name, noise(seed, 16, 24))
    train_loop(run_config(tmp_path, val, stop_after=2))
    header, rows = read_log(tmp_path / "run")
    assert [c for c in header if c.startswith("val_")] == ["val_bpsp", "val_bpsp_bbc", "val_bpsp_mate"]
    assert [r["step"] for r in rows] == ["0", "2"] and all(float(r["val_bpsp_mate"]) > 0 for r in rows)
    train_loop(run_config(tmp_path, val))  # resumes at step 2
    resumed_header, rows = read_log(tmp_path / "run")
    assert resumed_header == header and [r["step"] for r in rows] == ["0", "2", "4"]


def test_an_older_log_without_group_columns_still_resumes(tmp_path):
    val = tmp_path / "val"
    for name, seed in (("bbc-1.png", 0), ("mate-1.png", 1)):
        write_png(val / name, noise(seed, 16, 24))
    train_loop(run_config(tmp_path, val, stop_after=2))
    # Rewrite log.csv as an older trainer wrote it: no per-group columns, and one it no longer writes.
    header, rows = read_log(tmp_path / "run")
    old = [c for c in header if not c.startswith("val_bpsp_")] + ["val_note"]
    with open(tmp_path / "run" / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, old, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([r | {"val_note": "x"} for r in rows])
    train_loop(run_config(tmp_path, val))
    header, rows = read_log(tmp_path / "run")
    assert {"val_bpsp", "val_bpsp_bbc", "val_bpsp_mate", "val_note"} <= set(header)
    assert [r["step"] for r in rows] == ["0", "2", "4"]
    assert rows[0]["val_bpsp_bbc"] == "" and rows[0]["val_note"] == "x" and float(rows[2]["val_bpsp_bbc"]) > 0
