"""Every exit code of ``callic encode``, ``decode`` and ``info`` that the README documents, and
messages that name the user's file (never a temporary name or an internal object)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codec.container import HEAD, SIGNATURE, Container, parse
from codec.header import KNOWN_CRITICAL, Header
from codec.images import read_image
from jobs.cli import main
from tests.conftest import assert_same_pixels

FIXTURES = Path(__file__).parent / "fixtures"
GRAY = (np.arange(24 * 20, dtype=np.uint32).reshape(24, 20) * 7 % 256).astype(np.uint8)


@pytest.fixture()
def gray_png(tmp_path) -> Path:
    """A small gray PNG: coded by JPEG-XL lossless, no model needed, fast."""
    path = tmp_path / "gray.png"
    Image.fromarray(GRAY).save(path)
    return path


def _rebuilt(data: bytes, **head_changes) -> bytes:
    """A version 2 file with its HEAD fields changed and every CRC valid again."""
    container = parse(data, KNOWN_CRITICAL)
    header = dataclasses.replace(Header.from_bytes(container.require(HEAD)), **head_changes)
    out = Container()
    for tag, payload in container.sections:
        out.add(tag, header.to_bytes() if tag == HEAD else payload)
    return out.to_bytes()


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_exit_0_encode_decode_info(tmp_path, gray_png, capsys):
    out = tmp_path / "g.cllc"
    assert main(["encode", str(gray_png), str(out)]) == 0
    assert main(["info", str(out)]) == 0
    assert main(["decode", str(out), str(tmp_path / "back.png")]) == 0
    assert_same_pixels(read_image(tmp_path / "back.png").pixels, GRAY)
    assert _err(capsys) == ""


def test_exit_1_missing_input_files_and_output_folder(tmp_path, gray_png, capsys):
    """A file that is not there is exit 1, "file not found", for every command (not 2: there is no
    image content to call unreadable); a missing output folder is named, not a hidden temp file."""
    assert main(["encode", str(tmp_path / "nope.png"), str(tmp_path / "x.cllc")]) == 1
    err = _err(capsys)
    assert "nope.png" in err and "No such file" in err
    assert main(["decode", str(tmp_path / "nope.cllc"), str(tmp_path / "x.png")]) == 1
    assert "nope.cllc" in _err(capsys)
    assert main(["info", str(tmp_path / "nope.cllc")]) == 1
    assert "nope.cllc" in _err(capsys)
    assert main(["encode", str(gray_png), str(tmp_path / "no-such-folder" / "x.cllc")]) == 1
    err = _err(capsys)
    assert f"output folder {tmp_path / 'no-such-folder'} does not exist" in err and ".part" not in err, err
    assert not (tmp_path / "no-such-folder").exists()


def test_exit_2_text_file_as_image_names_the_file(tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("just some words\n")
    assert main(["encode", str(text), str(tmp_path / "x.cllc")]) == 2
    err = _err(capsys)
    assert str(text) in err and "not an image" in err and "BytesIO" not in err and "0x" not in err, err


def test_exit_3_corrupt_or_truncated_files(tmp_path, gray_png, capsys):
    good = tmp_path / "g.cllc"
    assert main(["encode", str(gray_png), str(good)]) == 0
    truncated = tmp_path / "t.cllc"
    truncated.write_bytes(good.read_bytes()[:-9])
    garbage = tmp_path / "garbage.cllc"
    garbage.write_bytes(b"hello, not a cllc file")
    for path in (truncated, garbage):
        assert main(["decode", str(path), str(tmp_path / "x.png")]) == 3
        assert main(["info", str(path)]) == 3
        assert str(path) in _err(capsys)
    assert not (tmp_path / "x.png").exists()


def test_exit_4_unsupported_version_and_output_format(tmp_path, gray_png, capsys):
    good = tmp_path / "g.cllc"
    assert main(["encode", str(gray_png), str(good)]) == 0
    newer = tmp_path / "newer.cllc"
    data = bytearray(good.read_bytes())
    data[len(SIGNATURE)] = 99  # format version 99: outside every CRC
    newer.write_bytes(bytes(data))
    assert main(["info", str(newer)]) == 4
    assert main(["decode", str(newer), str(tmp_path / "n.png")]) == 4
    assert main(["decode", str(good), str(tmp_path / "out.xyz")]) == 4
    assert not (tmp_path / "out.xyz").exists()
    assert "out.xyz" in _err(capsys)


def test_exit_5_model_not_installed(tmp_path, capsys):
    """A learned file naming a model hash nothing installed has."""
    data = (FIXTURES / "rgb-mgcf.v2.cllc").read_bytes()
    unknown = tmp_path / "unknown-model.cllc"
    unknown.write_bytes(_rebuilt(data, model_hash=bytes(range(32))))
    assert main(["info", str(unknown)]) == 0  # the header is sound
    assert main(["decode", str(unknown), str(tmp_path / "u.png")]) == 5
    assert "unknown-model.cllc" in _err(capsys)


def test_exit_6_pixel_hash_mismatch(tmp_path, capsys):
    """The stored hash changed and the CRC fixed: only the decoded pixels can tell."""
    data = (FIXTURES / "gray-jxl.v2.cllc").read_bytes()
    edited = tmp_path / "edited.cllc"
    edited.write_bytes(_rebuilt(data, pixel_hash=bytes(32)))
    assert main(["info", str(edited)]) == 0
    assert main(["decode", str(edited), str(tmp_path / "e.png")]) == 6
    err = _err(capsys)
    assert "edited.cllc" in err and "does not match the hash" in err, err
    assert not (tmp_path / "e.png").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["encode"],
        ["encode", "only-one-argument.png"],
        ["decode", "a.cllc"],
        ["info"],
        ["nonsense-command"],
        ["encode", "{png}", "x.cllc", "--jxl-effort", "11"],
        ["encode", "{png}", "x.cllc", "--quality", "2"],  # --quality is for --codec cca only
        ["encode", "{png}", "{png}", "-"],  # stdout takes one input
        ["encode", "-", "{png}", "{out}"],  # stdin must be the only input
    ],
)
def test_exit_64_bad_usage(argv, tmp_path, gray_png):
    argv = [a.format(png=gray_png, out=tmp_path / "out") for a in argv]
    assert main(argv) == 64
    assert not (tmp_path / "out").exists()


def test_exit_64_two_inputs_to_one_output_name(tmp_path, gray_png, capsys):
    other = tmp_path / "sub"
    other.mkdir()
    Image.fromarray(GRAY).save(other / "gray.tif")
    assert main(["encode", str(gray_png), str(other / "gray.tif"), str(tmp_path / "out")]) == 64
    assert "gray.cllc" in _err(capsys)
    assert not (tmp_path / "out").exists()  # refused before any work
