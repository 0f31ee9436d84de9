"""The conventions of cjxl/djxl and batch tools: a light start-up, ``--version``, ``--quiet`` and
help everywhere, ``-`` for stdin/stdout, several inputs or a folder into an output folder,
``--json`` result lines, outputs with the user's umask, one unit per kind of file."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import codec
from jobs import atomic
from jobs.cli import build_parser, main
from tests.conftest import SAMPLES, assert_same_pixels

ROOT = Path(__file__).resolve().parents[1]
GRAY = (np.arange(24 * 20, dtype=np.uint32).reshape(24, 20) * 7 % 256).astype(np.uint8)


def _png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def _cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "jobs.cli", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, env=env, cwd=ROOT, timeout=300)


# ---------------------------------------------------------------- start-up


def test_help_version_and_info_import_neither_torch_nor_ray(tmp_path):
    """What keeps ``callic --help`` and ``callic info`` under a second: torch and Ray stay out."""
    probe = (
        "import sys, contextlib, io\n"
        "import codec\n"
        "from jobs.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    codes = [main(['--help']), main(['--version']), main(['info', sys.argv[1]]), main(['info', '--help'])]\n"
        "    meta = codec.info(open(sys.argv[1], 'rb').read())\n"
        "print(codes, meta['coder'], 'callic 'in out.getvalue(), 'torch' in sys.modules, 'ray' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    fixture = ROOT / "tests" / "fixtures" / "rgb-mgcf.v2.cllc"
    out = subprocess.run(
        [sys.executable, "-c", probe, str(fixture)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.split() == ["[0,", "0,", "0,", "0]", "mgcf", "True", "False", "False"], out


def test_codec_api_names_still_import_from_codec_api():
    import codec.api
    import codec.header
    import codec.mgcf.adapters
    import codec.mgcf.rpft
    from jobs.adaptargs import ADAPT_LAYERS, ADAPT_ORDERS

    assert codec.api.read_header is codec.header.read_header and codec.api.info is codec.info
    assert codec.api.Header is codec.header.Header and codec.api.KNOWN_CRITICAL == codec.header.KNOWN_CRITICAL
    assert codec.mgcf.adapters.SECTION == codec.header.ADAPTERS_SECTION
    assert tuple(codec.mgcf.rpft.ORDERS) == ADAPT_ORDERS
    assert tuple(codec.mgcf.rpft.LAYERS) == ADAPT_LAYERS


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("callic ")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_is_listed_has_quiet_and_helps_every_positional(capsys):
    from jobs.cli import COMMANDS

    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    parser = build_parser()  # every command's real parser
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, command in COMMANDS.items():
        assert name in listing and command.help in " ".join(listing.split())
        assert helps[name] == command.help, name  # the registry's line is the command's own
    for name, p in _subparsers(parser).items():
        options = {s for a in p._actions for s in a.option_strings}
        assert "--quiet" in options, name
        for action in p._actions:
            if not action.option_strings:
                assert action.help, f"{name} {action.dest}"


# ---------------------------------------------------------------- stdin and stdout


def test_encode_stdin_to_stdout_and_decode_back():
    png = _png_bytes(GRAY)
    enc = _cli("encode", "-", "-", "--steps", "0", stdin=png)
    assert enc.returncode == 0, enc.stderr
    assert enc.stdout.startswith(b"CLLC\r\n\x1a\n") and b"<stdin> -> <stdout>" in enc.stderr
    dec = _cli("decode", "-", "-", stdin=enc.stdout)
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout.startswith(b"\x89PNG")  # PNG by default
    assert_same_pixels(_pixels(dec.stdout), GRAY)


def test_decode_to_stdout_in_a_chosen_format_and_stdin_to_a_file(tmp_path):
    cllc = tmp_path / "g.cllc"
    enc = _cli("encode", "-", str(cllc), "--steps", "0", "--json", stdin=_png_bytes(GRAY))
    assert enc.returncode == 0, enc.stderr
    assert json.loads(enc.stdout)["input"] == "<stdin>"
    dec = _cli("decode", str(cllc), "-", "--format", "tiff", "-q")
    assert dec.returncode == 0 and dec.stderr == b"", dec.stderr
    assert dec.stdout[:4] in (b"II*\x00", b"MM\x00*")
    assert_same_pixels(_pixels(dec.stdout), GRAY)


def test_stdin_errors_name_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"not an image")))
    assert main(["encode", "-", "x.cllc"]) == 2
    assert "<stdin>" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"not a cllc")))
    assert main(["decode", "-", "x.png"]) == 3
    assert "<stdin>" in capsys.readouterr().err


# ---------------------------------------------------------------- several files, folders, --json


def _tree(root: Path) -> dict[str, np.ndarray]:
    """Three gray images, one in a subfolder, and a file that is not an image."""
    images = {"a.png": GRAY, "b.png": GRAY[::-1].copy(), "sub/c.png": GRAY.T.copy()}
    for name, pixels in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / name)
    (root / "readme.txt").write_text("not an image, and not listed: wrong suffix")
    return images


def test_folder_in_folder_out_and_back(tmp_path, capsys):
    src = tmp_path / "src"
    images = _tree(src)
    assert main(["encode", str(src), str(tmp_path / "coded" / "deep"), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]  # stdout holds JSON lines only
    assert sorted(Path(r["input"]).relative_to(src).as_posix() for r in records) == sorted(images)
    for r in records:
        assert r["bytes"] == Path(r["output"]).stat().st_size and r["coder"] == "jxl-lossless"
        assert {"bpsp", "seconds", "adapters", "adapter_bytes", "learned_bytes", "classical_bytes"} <= set(r)
        assert "bpp" not in r
    coded = tmp_path / "coded" / "deep"
    assert sorted(p.relative_to(coded).as_posix() for p in coded.rglob("*.cllc")) == ["a.cllc", "b.cllc", "sub/c.cllc"]
    assert main(["decode", str(coded), str(tmp_path / "back"), "-q"]) == 0
    assert capsys.readouterr().out == ""
    for name, pixels in images.items():
        assert_same_pixels(np.asarray(Image.open(tmp_path / "back" / name)), pixels)


def test_one_bad_file_does_not_stop_the_others(tmp_path, capsys):
    src = tmp_path / "src"
    images = _tree(src)
    bad = tmp_path / "bad.png"
    bad.write_text("text")
    args = [str(src / "a.png"), str(tmp_path / "missing.png"), str(bad), str(src / "b.png"), str(tmp_path / "out")]
    assert main(["encode", *args, "--json"]) == 1  # the first failure's code (missing: 1, then unreadable: 2)
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [Path(r["input"]).name for r in records] == ["a.png", "missing.png", "bad.png", "b.png"]
    assert [r.get("exit_code") for r in records] == [None, 1, 2, None]
    assert "missing.png" in captured.err and "bad.png" in captured.err
    for name in ("a", "b"):
        back = tmp_path / f"{name}.png"
        assert main(["decode", str(tmp_path / "out" / f"{name}.cllc"), str(back), "-q"]) == 0
        assert_same_pixels(np.asarray(Image.open(back)), images[f"{name}.png"])


def test_single_file_into_an_existing_folder(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert main(["encode", str(SAMPLES / "camera-crop.png"), str(tmp_path / "out"), "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert (tmp_path / "out" / "camera-crop.cllc").is_file()


def test_learned_and_auto_results_in_json(tmp_path, tiny_model_path, capsys):
    src = SAMPLES / "kodim23-crop.png"
    common = ["--model", str(tiny_model_path), "--steps", "0", "--json"]
    assert main(["encode", str(src), str(tmp_path / "l.cllc"), "--codec", "callic", *common]) == 0
    learned = json.loads(capsys.readouterr().out)
    assert learned["coder"] == "mgcf" and learned["bytes"] == learned["learned_bytes"]
    assert main(["encode", str(src), str(tmp_path / "a.cllc"), "--codec", "auto", *common]) == 0
    auto = json.loads(capsys.readouterr().out)
    assert auto["learned_bytes"] == learned["bytes"] and auto["classical_bytes"] > 0
    assert auto["bytes"] == min(auto["learned_bytes"], auto["classical_bytes"])
    assert codec.info((tmp_path / "a.cllc").read_bytes())["bytes"] == auto["bytes"]


# ---------------------------------------------------------------- units


def test_lossy_files_are_in_bits_per_pixel_with_psnr(tmp_path, tiny_lossy_model_path, capsys):
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    out = tmp_path / "l.cllc"
    assert (
        main(["encode", str(tmp_path / "rgb.png"), str(out), "--codec", "cca", "--model", str(tiny_lossy_model_path)])
        == 0
    )
    line = capsys.readouterr().out
    assert " bpp, PSNR " in line and "bpsp" not in line, line
    meta = codec.info(out.read_bytes())
    assert meta["lossy"] and meta["bits_per_pixel"] == 8 * meta["bytes"] / (64 * 64) and "bits_per_subpixel" not in meta
    assert (
        main(
            [
                "encode",
                str(tmp_path / "rgb.png"),
                str(out),
                "--codec",
                "cca",
                "--json",
                "--model",
                str(tiny_lossy_model_path),
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["bpp"] == meta["bits_per_pixel"] and "bpsp" not in record and 5 < record["psnr"] < 100
    lossless = codec.info((ROOT / "tests" / "fixtures" / "gray-jxl.v2.cllc").read_bytes())
    assert not lossless["lossy"] and "bits_per_subpixel" in lossless and "bits_per_pixel" not in lossless


def test_lossy_bench_settings_are_the_cli_quality_numbers(tiny_lossy_model_path):
    from jobs.bench.lossy import registry_codec

    ours, _ = registry_codec("cca", [str(tiny_lossy_model_path)] * 3, "cpu")
    assert ours.settings == [1, 2, 3]  # --quality 1..N, not 0..N-1


# ---------------------------------------------------------------- file mode


@pytest.fixture()
def umask():
    """Set the process umask for one test (and forget the cached one before and after)."""
    old = os.umask(0o022)
    os.umask(old)

    def set_to(value: int) -> None:
        os.umask(value)
        atomic.current_umask.cache_clear()

    yield set_to
    os.umask(old)
    atomic.current_umask.cache_clear()


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    png = tmp_path / "g.png"
    Image.fromarray(GRAY).save(png)
    assert main(["encode", str(png), str(tmp_path / "g.cllc"), "-q"]) == 0
    assert main(["decode", str(tmp_path / "g.cllc"), str(tmp_path / "back.png"), "-q"]) == 0
    for name in ("g.cllc", "back.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_umask_is_read_without_proc_too(monkeypatch, umask):
    """Where /proc is missing, ``os.umask`` is read and put back."""
    umask(0o027)
    real_open = open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    atomic.current_umask.cache_clear()
    assert atomic.output_mode() == 0o640
    assert os.umask(0o027) == 0o027  # restored
