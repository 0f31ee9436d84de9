"""Every file any shipped version wrote still decodes: fixtures of each ``.cllc`` format version,
made with the shipped models (``tests/fixtures/make_fixtures.py``), decode to the pixels frozen
beside them; v1 files verify with the v1 hash, v2 files with the v2 one."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

import codec
from codec.container import FORMAT_VERSION, SIGNATURE
from codec.raster import pixel_hash, raster_hash
from tests.conftest import assert_same_pixels
from tests.fixtures.make_fixtures import FIRST_VERSION, rasters

FIXTURES = Path(__file__).parent / "fixtures"
FILES = sorted(FIXTURES.glob("*.cllc"))


def _expected(path: Path) -> codec.Raster:
    return rasters()[path.name.split(".")[0]]


def test_each_format_version_has_fixtures_of_every_kind():
    """Every kind in every version since the first that could write it (``FIRST_VERSION``)."""
    for version in (1, FORMAT_VERSION):
        names = {n for n in rasters() if FIRST_VERSION.get(n, 1) <= version}
        assert {p.name.split(".")[0] for p in FILES if p.name.split(".")[1] == f"v{version}"} == names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_fixture_decodes_to_its_pixels_and_facts(path):
    data = path.read_bytes()
    version = int(path.name.split(".")[1][1:])
    assert struct.unpack_from("<H", data, len(SIGNATURE))[0] == version
    raster = codec.decode(data)
    assert_same_pixels(raster.pixels, np.load(FIXTURES / f"{path.name.split('.')[0]}.npy"))
    want = _expected(path)
    assert raster.mode == want.mode
    assert (raster.palette, raster.transparency) == (want.palette, want.transparency)
    if want.palette is not None:
        assert raster.palette_mode == want.palette_mode
    assert (raster.icc_profile, raster.exif, raster.xmp) == (want.icc_profile, want.exif, want.xmp)
    stored = bytes.fromhex(codec.info(data)["pixel_sha256"])
    assert stored == (pixel_hash(raster.pixels) if version == 1 else raster_hash(raster))
