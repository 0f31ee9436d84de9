"""``callic data``: the training set and the two evaluation sets, built from registry packages.

- ``pkg13``: the 13 lossless photographs that PyPI and Debian packages carry (sporco, scikit-image,
  libjxl-testdata). Never trained on.
- ``vc2crops24``: 24 crops of 768x512 from the bottom 1024 rows of the three BBC photographs
  (vc2-conformance-data, 16-bit, rounded to 8 bits). That band is held out of training.
- ``val``: a 128-row strip of each BBC photograph just above the held-out band (16 rows of guard
  on each side), plus held-out photos of the other sources (a mate, a plasma and two lomiri
  wallpapers, four tuxpaint stamps; none in ``train``): what ``callic train`` reports validation
  bpsp on, per source, so no evaluation image steers training.
- ``train``: the BBC photographs above the validation strip (rows 0-1647) at full size and
  area-downscaled 2x and 4x (downscaled in 16 bits, then rounded), JPEG photo wallpapers
  from Debian area-downscaled 4x (which averages away most JPEG artefacts; training only), the
  opaque inside of tuxpaint's photographic stamps, and the lossless non-evaluation photos of
  scikit-image and libjxl-testdata. Nothing in it shows a scene of an evaluation image
  (motorcycle_right, the stereo twin of motorcycle_left, and the 64x64 crops of the wesaturate
  photos are left out on purpose).

Every set is a folder of plain 8-bit RGB PNGs plus ``manifest.json`` (file, SHA-256 of the pixels,
size, source; in ``train`` and ``val`` the source ``group`` too, which ``jobs.trainsets`` samples
and validates by). The evaluation manifests are pinned in ``jobs/manifests/``: a prepared
evaluation image whose pixels differ is an error, since results on it would not be comparable
(but a ``val`` image decoded from a JPEG only warns). The training manifest is pinned too but
only warned about (JPEG decoders may differ in the last bit).

Preparation is idempotent: images already present with the pinned pixels are kept, and archives
are downloaded once into ``<root>/downloads``; a PNG that an earlier run wrote (listed in the
folder's old manifest.json) and the set no longer holds is deleted, so a photo moved from train
to val does not stay in an old train folder. The BBC photographs (GPL-3.0) and the tuxpaint
stamps (GPL-2+) are read at run time from the downloaded archives and never committed.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from codec.raster import pixel_hash
from jobs.atomic import write_atomically
from jobs.sources import Archive, DataError, download, read_members

MANIFESTS = Path(__file__).with_name("manifests")
MAX_SOURCE_PIXELS = 64 << 20  # wallpapers reach 18 MP; refuse anything absurd before decoding

SPORCO = Archive(
    "sporco 0.2.2.post1",
    "pypi",
    "40/55/0e34478be4cd365a85853f82e3d4f2b09da9d20b27c98649c1448e21d7c5/sporco-0.2.2.post1-py3-none-any.whl",
    "a5b600be67a062e8efc5e90484cd7043c72f04f84209f435ae711e4fd33f87f8",
    "BSD-3-Clause (code); Kodak and standard test images",
)
SKIMAGE = Archive(
    "scikit-image 0.26.0",
    "pypi",
    "a5/2a/e71c1a7d90e70da67b88ccc609bd6ae54798d5847369b15d3a8052232f9d/"
    "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
    "BSD-3-Clause (code); images CC0 / public domain",
)
VC2 = Archive(
    "vc2-conformance-data 1.0.0",
    "pypi",
    "5a/25/1179bbeda0a5133d47b9659de1a77fd4dd6b78900d9627e97999d78b33d5/vc2_conformance_data-1.0.0-py3-none-any.whl",
    "b7efc2fc5ed53375038f848ca8d2f9b4bfba23bafff99a3995d04a4e1023e330",
    "GPL-3.0-only: loaded at run time, never committed",
)
JXL = Archive(
    "libjxl-testdata 0.0~git20230110.d6168ff-1",
    "debian",
    "pool/main/libj/libjxl-testdata/libjxl-testdata_0.0~git20230110.d6168ff-1_all.deb",
    "a58523413f486760a0f3cbc931142a27e3aa25f77315b862046f089ed34aa2c7",
    "BSD-3-Clause / CC0",
)
MATE = Archive(
    "mate-backgrounds 1.26.0-1",
    "debian",
    "pool/main/m/mate-backgrounds/mate-backgrounds_1.26.0-1_all.deb",
    "7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04",
    "GPL-2+ and free licences per image (debian/copyright)",
)
PLASMA = Archive(
    "plasma-workspace-wallpapers 4:5.27.5-2",
    "debian",
    "pool/main/p/plasma-workspace-wallpapers/plasma-workspace-wallpapers_5.27.5-2_all.deb",
    "32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b",
    "LGPL-3 / CC-BY-SA per image (debian/copyright)",
)
UKUI = Archive(
    "ukui-wallpapers 20.04.3-1.1",
    "debian",
    "pool/main/u/ukui-wallpapers/ukui-wallpapers_20.04.3-1.1_all.deb",
    "6d49be70152e6d603163458e177e501deb0be8f2916389ccbfcf59b0d7fc0262",
    "CC-BY-SA-3.0 (debian/copyright)",
)
LOMIRI = Archive(
    "lomiri-wallpapers 20.04.0-4",
    "debian",
    "pool/main/l/lomiri-wallpapers/lomiri-wallpapers_20.04.0-4_all.deb",
    "ad1cbde517f0777ee0da087232d5be6a29245e323441cf435b970dbc33d6efb2",
    "CC-BY-SA-3.0 (debian/copyright)",
)
LOMIRI_1604 = Archive(
    "lomiri-wallpapers-16.04 20.04.0-4",
    "debian",
    "pool/main/l/lomiri-wallpapers/lomiri-wallpapers-16.04_20.04.0-4_all.deb",
    "f74676719f9d0128e5310e65ef97d596bcece8b6a43524ab8949ee1be0a4f18c",
    "CC-BY-4.0 / CC-BY-SA-4.0 / CC0-1.0 per image (debian/copyright)",
)
LOMIRI_2004 = Archive(
    "lomiri-wallpapers-20.04 20.04.0-4",
    "debian",
    "pool/main/l/lomiri-wallpapers/lomiri-wallpapers-20.04_20.04.0-4_all.deb",
    "fbf4c3bcbfea7f70bc1f5ed270fe97995119d02e9102715e0377d877ee848b0b",
    "CC-BY-SA-3.0 (debian/copyright)",
)
TUXPAINT = Archive(
    "tuxpaint-stamps-default 2025.03.31-1",
    "debian",
    "pool/main/t/tuxpaint-stamps/tuxpaint-stamps-default_2025.03.31-1_all.deb",
    "6312d03a37d0220b10fc91a7467bf2a2a2336e08c2f416de04311d25fd7aeacb",
    "GPL-2+ (debian/copyright): loaded at run time, never committed",
)


@dataclass(frozen=True)
class Photo:
    """One image member of an archive, saved as ``out`` after shrinking by ``reduce`` (box filter).

    ``group`` names the source in the set's manifest (the trainer samples and validates per group;
    None: no group is recorded, as for the evaluation sets). ``opaque_min`` > 0: the member has an
    alpha channel and only its largest fully opaque rectangle is kept, if both its sides are at
    least ``opaque_min`` (else the member is skipped)."""

    out: str
    archive: Archive
    member: str
    reduce: int = 1
    group: str | None = None
    opaque_min: int = 0


@dataclass(frozen=True)
class RawPhoto:
    """A VC-2 conformance picture: raw planar 16-bit little-endian, planes G, B, R; size in the JSON."""

    name: str
    archive: Archive
    raw: str
    meta: str
    group: str | None = None  # recorded for its train and val images (not for the evaluation crops)


@dataclass(frozen=True)
class BandSplit:
    """Where a raw photo is cut: the bottom ``crop_rows * crop_h`` rows are held out for evaluation
    crops; above them, after ``guard`` rows, a ``val_rows`` validation strip; training uses the
    rows above that, less another guard, at each scale in ``scales``."""

    crop_w: int = 768
    crop_h: int = 512
    crop_cols: int = 4
    crop_rows: int = 2
    guard: int = 16
    val_rows: int = 128
    scales: tuple[int, ...] = (1, 2, 4)


@dataclass(frozen=True)
class DatasetSpec:
    """What ``prepare`` builds: sets of photos, plus raw photos split into train, val and vc2crops24."""

    photos: dict[str, tuple[Photo, ...]]
    raw_photos: tuple[RawPhoto, ...] = ()
    split: BandSplit = field(default_factory=BandSplit)


def _pkg13() -> tuple[Photo, ...]:
    sporco = [Photo(f"{n}.png", SPORCO, f"sporco/data/{n}.png") for n in ("kodim23", "monarch", "sail", "tulips")]
    sporco.append(Photo("barbara.png", SPORCO, "sporco/data/barbara.png"))
    skimage_names = ("astronaut", "chelsea", "coffee", "motorcycle_left")
    skimage = [Photo(f"{n}.png", SKIMAGE, f"skimage/data/{n}.png") for n in skimage_names]
    jxl = [Photo("flower.png", JXL, "usr/share/libjxl-testdata/jxl/flower/flower.png")]
    jxl += [
        Photo(f"{n}.png", JXL, f"usr/share/libjxl-testdata/external/wesaturate/500px/{n}_srgb8.png")
        for n in ("cvo9xd_keong_macan", "tmshre_riaphotographs", "u76c0g_bliznaca")
    ]
    return tuple(sporco + skimage + jxl)


# The wallpaper packages' photographs, chosen by looking at every member: renders, drawings,
# gradients and graphics are left out. Each is area-downscaled 4x (training only: they are JPEGs).
MATE_PHOTOS = {
    "nature": (
        "Aqua",
        "Blinds",
        "Dune",
        "FreshFlower",
        "Garden",
        "GreenMeadow",
        "RainDrops",
        "Storm",
        "TwoWings",
        "Wood",
        "YellowFlower",
    ),
    "desktop": ("GreenTraditional",),
    "abstract": ("Elephants_5640x3172",),
}
MATE_VAL = ("nature", "LadyBird")  # in train before issue 16; held out since
PLASMA_PHOTOS = (
    "BytheWater",
    "ColdRipple",
    "ColorfulCups",
    "FallenLeaf",
    "Kite",
    "OneStandsOut",
    "Path",
    "summer_1am",
)
PLASMA_VAL = "EveningGlow"  # in train before issue 16; held out since
# ukui-wallpapers' 12 members (2004default, calla, city, desert, firstgeneration, fluent-color,
# focal-ubuntukylin, goldfish, rhythm, rollpaper, string, the-mouse) are all renders or graphics,
# and lomiri-wallpapers' one (warty-final-lomiri.png) is a render: neither adds a photograph.
UKUI_PHOTOS: tuple[str, ...] = ()
LOMIRI_PHOTOS: tuple[str, ...] = ()
# lomiri-wallpapers-16.04: all 15 but umang_by_Abhishek_Mudgal (a gradient); two held out for val.
LOMIRI_1604_PHOTOS = (
    "Bridge_by_Sander_Klootwijk",
    "Dragonfly_by_Bolly",
    "Picture_1A_by_freespace",
    "Wine_by_Jakkub_Mede",
    "aitzgorri_by_Aitzol_Berasategi",
    "analogpattern_by_Peter_Nerlich",
    "free_by_Peter_Nerlich",
    "friends_by_Aitzol_Berasategi",
    "greentock_by_Peter_Nerlich",
    "picosdeeuropa_by_Aitzol_Berasategi",
    "seeding_by_Clements_Engelhardt",
    "sunset_by_Aitzol_Berasategi",
)
LOMIRI_1604_VAL = ("life_by_Aitzol_Berasategi", "Picture_0B_by_freespace")
LOMIRI_2004_PHOTOS = ("Kleiber_by_Lukas_Baubkus",)  # Fossa, Infinite-Sea and Painting-Colors are graphics
WALLPAPERS = (  # archive, group, its photographs for train, for val
    (UKUI, "ukui", UKUI_PHOTOS, ()),
    (LOMIRI, "lomiri", LOMIRI_PHOTOS, ()),
    (LOMIRI_1604, "lomiri", LOMIRI_1604_PHOTOS, LOMIRI_1604_VAL),
    (LOMIRI_2004, "lomiri", LOMIRI_2004_PHOTOS, ()),
)
# tuxpaint-stamps-default: the photographic stamps (photos cut out on a transparent background,
# chosen by looking at every stamp whose opaque area holds 128x128; clip-art, cartoons, renders
# and photos quantized to a palette left out), members under usr/share/tuxpaint/stamps/. Only the
# largest fully opaque rectangle of each is kept, at full size: the model trains on 128x128 crops.
TUXPAINT_STAMPS = (
    "animals/birds/albino_peahen",
    "animals/birds/helmeted_guineafowl",
    "animals/mammals/bears/european-bear",
    "food/fruit/Apricot_whole",
    "food/fruit/avocado",
    "food/fruit/cherimoya",
    "food/fruit/kiwi",
    "food/fruit/orange_seville",
    "food/fruit/Strawberry2",
    "food/spices/ginger",
    "hobbies/music/percussion/drum_tomtom_floor",
    "household/cylinder",
    "household/tools/spade",
    "plants/flowers/daffodil",
    "plants/trees/rambutan",
    "seasonal/christmas/Christmas_pudding",
    "seasonal/christmas/Mince_Pie",
    "seasonal/halloween/grave-d",
    "seasonal/halloween/grave-j",
    "space/solarsystem/0_sun",
    "space/solarsystem/1_mercury",
    "space/solarsystem/2_venus",
    "space/solarsystem/4_mars",
    "space/solarsystem/5_jupiter",
    "space/solarsystem/6_saturn",
    "space/solarsystem/7_uranus",
    "space/solarsystem/8_neptune",
    "vehicles/flight/balloon360",
    "vehicles/garbagetruck",
    "vehicles/wheel_tractor",
)
TUXPAINT_VAL = (
    "plants/flowers/anemone_red",
    "space/solarsystem/3_earth",
    "seasonal/christmas/Roast_turkey",
    "household/tools/cementmixer",
)
TUXPAINT_MIN_SIDE = 128  # the default model's crop and patch side


def _mate(folder: str, name: str) -> Photo:
    return Photo(f"mate-{name}.png", MATE, f"usr/share/backgrounds/mate/{folder}/{name}.jpg", reduce=4, group="mate")


def _plasma(name: str) -> Photo:
    member = f"usr/share/wallpapers/{name}/contents/images/2560x1600.jpg"
    return Photo(f"plasma-{name}.png", PLASMA, member, reduce=4, group="plasma")


def _wallpaper(archive: Archive, group: str, name: str) -> Photo:
    return Photo(f"{group}-{name}.png", archive, f"usr/share/backgrounds/{name}.jpg", reduce=4, group=group)


def _stamp(path: str) -> Photo:
    member = f"usr/share/tuxpaint/stamps/{path}.png"
    return Photo(
        f"tuxpaint-{path.rsplit('/', 1)[-1]}.png", TUXPAINT, member, group="tuxpaint", opaque_min=TUXPAINT_MIN_SIDE
    )


def _train_photos() -> tuple[Photo, ...]:
    photos = [_mate(folder, n) for folder, names in MATE_PHOTOS.items() for n in names]
    photos += [_plasma(n) for n in PLASMA_PHOTOS]
    photos += [_wallpaper(archive, group, n) for archive, group, names, _ in WALLPAPERS for n in names]
    photos += [_stamp(p) for p in TUXPAINT_STAMPS]
    photos.append(Photo("skimage-ihc.png", SKIMAGE, "skimage/data/ihc.png", group="skimage"))
    photos.append(Photo("jxl-hdr_room.png", JXL, "usr/share/libjxl-testdata/jxl/hdr_room.png", group="jxl"))
    return tuple(photos)


def _val_photos() -> tuple[Photo, ...]:
    """Held-out images of the other sources (the BBC strips come from ``split_raw``): no scene of
    them is in ``train``; small, so that validation stays cheap."""
    photos = [_mate(*MATE_VAL), _plasma(PLASMA_VAL)]
    photos += [_wallpaper(archive, group, n) for archive, group, _, names in WALLPAPERS for n in names]
    photos += [_stamp(p) for p in TUXPAINT_VAL]
    return tuple(photos)


BBC = tuple(
    RawPhoto(n, VC2, f"vc2_conformance_data/{n}.raw", f"vc2_conformance_data/{n}.json", group="bbc")
    for n in ("berries", "kingswood", "trees")
)


def default_spec() -> DatasetSpec:
    return DatasetSpec(photos={"pkg13": _pkg13(), "train": _train_photos(), "val": _val_photos()}, raw_photos=BBC)


SETS = ("train", "val", "pkg13", "vc2crops24")


def default_root() -> Path:
    return Path(os.environ.get("CALLIC_DATA", Path.home() / ".cache" / "callic" / "data"))


# ---------------------------------------------------------------------------------------------- pixels


def decode_rgb8(data: bytes, name: str, alpha: bool = False) -> np.ndarray:
    """An 8-bit RGB (``alpha``: RGBA) array from PNG or JPEG bytes; anything else is the wrong member."""
    with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height > MAX_SOURCE_PIXELS:
            raise DataError(f"{name}: {im.width}x{im.height} is larger than any photo we use")
        if im.mode not in ("RGB", "RGBA", "P"):
            raise DataError(f"{name}: expected an 8-bit colour image, got mode {im.mode}")
        return np.asarray(im.convert("RGBA" if alpha else "RGB"))


def largest_rectangle(mask: np.ndarray, min_side: int) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of the largest-area rectangle of True cells whose sides are both
    at least ``min_side``, or None. Every maximal rectangle is the widest one at some column's run
    height above some row (the histogram method), so checking those finds the constrained optimum;
    ties go to the first found (lowest bottom row, then leftmost), so the choice is fixed."""
    h, w = mask.shape
    heights = [0] * (w + 1)  # a 0 sentinel at the right pops every open run
    best_area, best = 0, None
    for y in range(h):
        row = mask[y].tolist()
        for x in range(w):
            heights[x] = heights[x] + 1 if row[x] else 0
        if max(heights) < min_side:
            continue
        stack: list[tuple[int, int]] = []  # (start column, height), heights increasing
        for x, hx in enumerate(heights):
            start = x
            while stack and stack[-1][1] >= hx:
                start, sh = stack.pop()
                width = x - start
                if sh >= min_side and width >= min_side and sh * width > best_area:
                    best_area, best = sh * width, (y - sh + 1, start, sh, width)
            stack.append((start, hx))
    return best


def opaque_crop(rgba: np.ndarray, min_side: int) -> np.ndarray | None:
    """The RGB pixels of the largest rectangle where alpha is 255 everywhere (a cut-out photo's
    inside, with no pixel whose colour the transparency hides), or None if it is smaller than
    ``min_side`` on a side."""
    box = largest_rectangle(rgba[..., 3] == 255, min_side)
    if box is None:
        return None
    y, x, h, w = box
    return np.ascontiguousarray(rgba[y : y + h, x : x + w, :3])


def box_reduce(pixels: np.ndarray, k: int) -> np.ndarray:
    """Area downscale by ``k`` (mean of k x k blocks, cropping the remainder), rounded half to even."""
    if k == 1:
        return pixels
    h, w = pixels.shape[0] // k * k, pixels.shape[1] // k * k
    blocks = pixels[:h, :w].astype(np.float64).reshape(h // k, k, w // k, k, -1)
    return blocks.mean(axis=(1, 3))


def to_uint8(values: np.ndarray, scale: float) -> np.ndarray:
    """Round ``values / scale`` to 8 bits (scale 257 maps 16-bit 65535 to 255)."""
    return np.clip(np.rint(np.asarray(values, np.float64) / scale), 0, 255).astype(np.uint8)


def decode_vc2_raw(raw: bytes, meta: bytes, name: str) -> np.ndarray:
    """(H, W, 3) uint16 RGB from a VC-2 conformance picture, checking its size against the JSON."""
    params = json.loads(meta)["video_parameters"]
    w, h = int(params["frame_width"]), int(params["frame_height"])
    if not (0 < w <= 1 << 14 and 0 < h <= 1 << 14) or len(raw) != w * h * 3 * 2:
        raise DataError(f"{name}: {len(raw)} bytes do not hold a {w}x{h} 16-bit 3-plane picture")
    planes = np.frombuffer(raw, dtype="<u2").reshape(3, h, w)
    return np.stack([planes[2], planes[0], planes[1]], axis=-1)  # G, B, R planes -> R, G, B


def split_raw(name: str, rgb16: np.ndarray, split: BandSplit) -> tuple[dict[str, np.ndarray], ...]:
    """Training images, validation strip and evaluation crops of one 16-bit photo; no two of them
    share a pixel row."""
    h, w = rgb16.shape[:2]
    eval_top = h - split.crop_rows * split.crop_h
    val_top = eval_top - split.guard - split.val_rows
    train_rows = val_top - split.guard
    if val_top <= 0 or train_rows <= 0 or w < split.crop_w:
        raise DataError(f"{name}: {w}x{h} is too small for the evaluation band")
    crops = {}
    xs = np.linspace(0, w - split.crop_w, split.crop_cols).round().astype(int)
    for r in range(split.crop_rows):
        for c, x in enumerate(xs):
            y = eval_top + r * split.crop_h
            crops[f"{name}-r{r}c{c}.png"] = to_uint8(rgb16[y : y + split.crop_h, x : x + split.crop_w], 257)
    band = rgb16[:train_rows]
    train = {f"bbc-{name}-{k}x.png": to_uint8(box_reduce(band, k), 257) for k in split.scales}
    val = {f"{name}-val.png": to_uint8(rgb16[val_top : val_top + split.val_rows], 257)}
    return train, val, crops


# ---------------------------------------------------------------------------------------------- sets


def load_manifest(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    return {e["file"]: e for e in json.loads(path.read_text())["images"]}


def _entry(file: str, pixels: np.ndarray, source: str, group: str | None = None) -> dict:
    entry = {
        "file": file,
        "sha256": pixel_hash(pixels).hex(),
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "source": source,
    }
    if group is not None:
        entry["group"] = group
    return entry


def _previous_files(path: Path) -> set[str]:
    """The file names an earlier run recorded in ``path`` (a set's manifest.json), if it is readable."""
    try:
        return set(load_manifest(path))
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _own_png(file: object) -> bool:
    """A plain PNG name directly in the set folder: the only kind of file prepare writes."""
    return isinstance(file, str) and file == Path(file).name and file.endswith(".png") and not file.startswith(".")


def _write_png(path: Path, pixels: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=6)
    write_atomically(path, buf.getvalue())


def _read_existing(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")) if im.mode == "RGB" else None
    except (OSError, ValueError):
        return None


class SetWriter:
    """Writes one set's images, checking each against the pinned manifest, and its manifest.json."""

    def __init__(self, root: Path, name: str, pinned: dict[str, dict], strict: bool, log: Callable[[str], None]):
        self.folder = root / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name, self.pinned, self.strict, self.log = name, pinned, strict, log
        self.entries: dict[str, dict] = {}
        self.previous = _previous_files(self.folder / "manifest.json")

    def present(self, file: str, group: str | None = None) -> bool:
        """True (and recorded, with ``group``) when the file is already there with the pinned pixels."""
        pin = self.pinned.get(file)
        if pin is None or not (self.folder / file).exists():
            return False
        pixels = _read_existing(self.folder / file)
        if pixels is None or pixel_hash(pixels).hex() != pin["sha256"]:
            return False
        self.entries[file] = pin if group is None else pin | {"group": group}
        return True

    def add(self, file: str, pixels: np.ndarray, source: str, group: str | None = None, exact: bool = True) -> None:
        """Write one image. ``exact`` False (decoded from a JPEG, whose decoders may differ in the
        last bit): a pixel mismatch with the pin is only warned about, even in a strict set."""
        entry = _entry(file, pixels, source, group)
        pin = self.pinned.get(file)
        if pin is not None and pin["sha256"] != entry["sha256"]:
            message = f"{self.name}/{file}: pixels differ from the pinned manifest ({entry['sha256'][:16]})"
            if self.strict and exact:
                raise DataError(message + "; results on it would not be comparable")
            self.log("warning: " + message)
        _write_png(self.folder / file, pixels)
        self.entries[file] = entry

    def finish(self) -> Path:
        images = [self.entries[f] for f in sorted(self.entries)]
        missing = sorted(set(self.pinned) - set(self.entries))
        if missing and self.strict:
            raise DataError(f"{self.name}: pinned images not produced: {missing}")
        path = self.folder / "manifest.json"
        write_atomically(path, (json.dumps({"name": self.name, "images": images}, indent=1) + "\n").encode())
        self._remove_stale()
        return path

    def _remove_stale(self) -> None:
        """Delete the PNGs an earlier run wrote that the set no longer holds (e.g. a photo moved
        from train to val), so that an old data folder does not keep training on them. Only files
        the folder's previous manifest.json listed are touched; anything else is left alone."""
        for file in sorted(self.previous - set(self.entries)):
            path = self.folder / file
            if _own_png(file) and path.is_file() and not path.is_symlink():
                path.unlink()
                self.log(f"{self.name}: removed {file} (no longer in the set)")


def _raw_outputs(spec: DatasetSpec, photo: RawPhoto) -> dict[str, list[str]]:
    """File names one raw photo yields, per set, without decoding it."""
    s = spec.split
    crops = [f"{photo.name}-r{r}c{c}.png" for r in range(s.crop_rows) for c in range(s.crop_cols)]
    return {
        "train": [f"bbc-{photo.name}-{k}x.png" for k in s.scales],
        "val": [f"{photo.name}-val.png"],
        "vc2crops24": crops,
    }


def _jobs(spec: DatasetSpec, sets: tuple[str, ...]) -> Iterator[tuple[Archive, list]]:
    """Per archive, the photos and raw photos that the chosen sets need from it."""
    by_archive: dict[Archive, list] = {}
    for set_name in sets:
        for photo in spec.photos.get(set_name, ()):
            by_archive.setdefault(photo.archive, []).append((set_name, photo))
    for raw in spec.raw_photos:
        if set(_raw_outputs(spec, raw)) & set(sets):
            by_archive.setdefault(raw.archive, []).append((None, raw))
    yield from by_archive.items()


def prepare(
    root: Path,
    sets: tuple[str, ...] = SETS,
    spec: DatasetSpec | None = None,
    manifests: Path = MANIFESTS,
    log: Callable[[str], None] = print,
    quiet: bool = False,
) -> dict[str, Path]:
    """Build the chosen sets under ``root``; returns each set's manifest path. ``quiet``: no
    progress bars (``log`` says what else is printed)."""
    spec = spec or default_spec()
    writers = {
        s: SetWriter(root, s, load_manifest(manifests / f"{s}.json"), strict=s != "train", log=log) for s in sets
    }
    for archive, items in _jobs(spec, sets):
        todo = [
            item
            for item in items
            if (item[0] is not None and not writers[item[0]].present(item[1].out, item[1].group))
            or (item[0] is None and not _raw_done(spec, item[1], writers))
        ]
        if not todo:
            continue
        path = download(archive, root / "downloads", quiet)
        names = [n for _, item in todo for n in ((item.member,) if isinstance(item, Photo) else (item.raw, item.meta))]
        members = read_members(path, names)
        bar = tqdm(todo, desc=archive.name, unit="image", leave=False, file=sys.stderr, disable=quiet)
        for set_name, item in bar:
            if isinstance(item, Photo):
                pixels = photo_pixels(item, members[item.member])  # not pop: two sets may use one member
                if pixels is None:
                    log(f"{set_name}: skipped {item.member}: no opaque area of {item.opaque_min}x{item.opaque_min}")
                    continue
                exact = not item.member.lower().endswith((".jpg", ".jpeg"))
                writers[set_name].add(item.out, pixels, f"{archive.name}:{item.member}", item.group, exact)
                continue
            rgb16 = decode_vc2_raw(members.pop(item.raw), members.pop(item.meta), item.raw)
            train, val, crops = split_raw(item.name, rgb16, spec.split)
            for target, images in (("train", train), ("val", val), ("vc2crops24", crops)):
                if target in writers:
                    group = item.group if target != "vc2crops24" else None
                    for file, pixels in images.items():
                        writers[target].add(file, pixels, f"{archive.name}:{item.raw}", group)
    result = {s: w.finish() for s, w in writers.items()}
    for s, w in writers.items():
        log(f"{s}: {len(w.entries)} images in {w.folder}")
    return result


def photo_pixels(photo: Photo, data: bytes) -> np.ndarray | None:
    """What ``photo`` keeps of its member: the decoded image, or its opaque crop (None when too
    small), then downscaled by ``photo.reduce``."""
    if photo.opaque_min:
        pixels = opaque_crop(decode_rgb8(data, photo.member, alpha=True), photo.opaque_min)
        if pixels is None:
            return None
    else:
        pixels = decode_rgb8(data, photo.member)
    return to_uint8(box_reduce(pixels, photo.reduce), 1) if photo.reduce > 1 else pixels


def _raw_done(spec: DatasetSpec, photo: RawPhoto, writers: dict[str, SetWriter]) -> bool:
    return all(
        writers[s].present(f, photo.group if s != "vc2crops24" else None)
        for s, files in _raw_outputs(spec, photo).items()
        if s in writers
        for f in files
    )


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="download and prepare the training and evaluation image sets")
    p.add_argument("sets", nargs="*", default=list(SETS), help=f"which sets (default: all of {', '.join(SETS)})")
    p.add_argument("--root", type=Path, help="data folder (default: $CALLIC_DATA or ~/.cache/callic/data)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary (errors still show)")
    p.set_defaults(func=main)


def main(args) -> int:
    unknown = set(args.sets) - set(SETS)
    if unknown:
        raise DataError(f"unknown set(s) {sorted(unknown)}; choose from {', '.join(SETS)}")
    quiet = args.quiet
    prepare(args.root or default_root(), tuple(args.sets), log=(lambda m: None) if quiet else print, quiet=quiet)
    return 0
