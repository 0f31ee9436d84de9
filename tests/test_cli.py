import json

import numpy as np
from PIL import Image

from codec.images import read_image
from jobs.cli import main
from tests.conftest import SAMPLES, assert_same_pixels


def test_encode_decode_info(tmp_path, tiny_model_path, capsys):
    src = SAMPLES / "chelsea-crop.png"
    out = tmp_path / "c.cllc"
    assert main(["encode", str(src), str(out), "--model", str(tiny_model_path), "--verify", "--codec", "callic"]) == 0
    assert main(["info", str(out)]) == 0
    meta = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert meta["coder"] == "mgcf" and meta["width"] == 128 and meta["height"] == 96
    for ext in ("png", "tif", "ppm", "bmp"):
        assert main(["decode", str(out), str(tmp_path / f"r.{ext}")]) == 0
        assert_same_pixels(read_image(tmp_path / f"r.{ext}").pixels, read_image(src).pixels)


def test_errors_have_exit_codes(tmp_path, tiny_model_path, capsys):
    bad_image = tmp_path / "bad.png"
    bad_image.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert main(["encode", str(bad_image), str(tmp_path / "x.cllc")]) == 2
    assert "cannot read image" in capsys.readouterr().err
    garbage = tmp_path / "g.cllc"
    garbage.write_bytes(b"hello")
    assert main(["decode", str(garbage), str(tmp_path / "g.png")]) == 3
    assert main(["decode", str(tmp_path / "missing.cllc"), str(tmp_path / "m.png")]) == 1
    assert main(["encode"]) == 64
    good = tmp_path / "ok.cllc"
    assert main(["encode", str(SAMPLES / "camera-crop.png"), str(good)]) == 0
    assert main(["decode", str(good), str(tmp_path / "out.xyz")]) == 4
    assert not (tmp_path / "out.xyz").exists()


def test_gray_and_16bit_files(tmp_path):
    arr = ((np.arange(30 * 20).reshape(30, 20) * 97) % 65536).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    assert main(["encode", str(tmp_path / "g16.png"), str(tmp_path / "g16.cllc")]) == 0
    assert main(["decode", str(tmp_path / "g16.cllc"), str(tmp_path / "g16-out.png")]) == 0
    assert_same_pixels(read_image(tmp_path / "g16-out.png").pixels, arr.astype(np.uint16))
