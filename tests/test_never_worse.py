"""Never worse than JPEG-XL by default (issue 15, item 7): ``coder="auto"`` keeps the smaller of the
learned and the JPEG-XL lossless file, in the API, ``callic encode`` and ``callic archive``;
``coder="learned"`` / ``--codec callic`` force the learned coder; small images are not adapted;
one default number of adaptation steps everywhere."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json

import imagecodecs
import numpy as np
import pytest
from PIL import Image

import codec
import codec.api
from codec import fallback, registry
from codec.defaults import DEFAULT_JXL_EFFORT, DEFAULT_STEPS, MIN_ADAPT_PIXELS
from codec.errors import CallicError, UnsupportedError
from codec.header import read_header
from codec.images import read_image
from codec.mgcf import rpft
from codec.mgcf.rpft import AdaptConfig
from jobs.archivecodec import ArchiveCodec, CodecSettings
from pipeline.items import Resources
from tests.conftest import assert_same_pixels

RNG = np.random.default_rng(15)
NOISE = RNG.integers(0, 256, (40, 48, 3), dtype=np.uint8)  # incompressible: no model beats JPEG-XL on it
NOISE_RGBA = RNG.integers(0, 256, (40, 48, 4), dtype=np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _no_adaptation(monkeypatch) -> list:
    """Make ``rpft.adapt`` record its calls and refuse to run: proves which images were adapted."""
    calls: list = []

    def refuse(model, images, cfg):
        calls.append([im.shape for im in images])
        raise AssertionError("adapted")

    monkeypatch.setattr(rpft, "adapt", refuse)
    return calls


# ---------------------------------------------------------------- the API


@pytest.mark.parametrize("pixels", [NOISE, NOISE_RGBA], ids=["rgb", "rgba"])
def test_default_encode_of_noise_is_no_larger_than_jpeg_xl(pixels, tiny_model):
    [(data, report)] = codec.api.encode_many([pixels], model=tiny_model)
    jxl = imagecodecs.jpegxl_encode(pixels, lossless=True, effort=DEFAULT_JXL_EFFORT)
    assert len(data) <= len(jxl) + 150  # JPEG-XL's codestream plus at most a .cllc header
    classical = codec.encode(pixels, coder="classical")
    overhead = len(classical) - len(jxl)  # HEAD and the container's framing: the file's only extra bytes
    assert 0 < overhead < 150
    assert len(data) <= len(jxl) + overhead and data == classical
    assert report.coder == codec.info(data)["coder"] == "jxl-lossless"
    assert report.classical_bytes == len(data) == report.bytes < report.learned_bytes
    assert_same_pixels(codec.decode(data).pixels, pixels)


@pytest.mark.parametrize("pixels", [NOISE, NOISE_RGBA], ids=["rgb", "rgba"])
def test_learned_forces_the_learned_file(pixels, tiny_model):
    [(data, report)] = codec.api.encode_many([pixels], model=tiny_model, coder="learned", verify=True)
    assert report.coder == codec.info(data)["coder"] == "mgcf"
    assert report.learned_bytes == len(data) and report.classical_bytes is None
    assert len(data) > len(codec.encode(pixels, coder="classical"))  # what "auto" protects against
    assert_same_pixels(codec.decode(data, model=tiny_model).pixels, pixels)


def test_classical_never_loads_a_model(monkeypatch):
    monkeypatch.setattr(codec.api, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    [(data, report)] = codec.api.encode_many([NOISE], coder="classical")
    assert report.coder == "jxl-lossless" and report.learned_bytes is None and report.classical_bytes == len(data)
    assert_same_pixels(codec.decode(data).pixels, NOISE)


def _bloated_jxl(monkeypatch, extra: int) -> None:
    """JPEG-XL payloads ``extra`` bytes longer than libjxl's (never decoded: they must not be kept)."""
    real = fallback.jxl_encode
    monkeypatch.setattr(fallback, "jxl_encode", lambda px, effort=DEFAULT_JXL_EFFORT: real(px, effort) + bytes(extra))


def test_the_learned_file_is_kept_where_it_is_smaller(monkeypatch, tiny_model):
    smooth = np.repeat(np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None], 40, axis=0).repeat(3, axis=2)
    learned = codec.encode(smooth, model=tiny_model, coder="learned")
    _bloated_jxl(monkeypatch, len(learned))  # now JPEG-XL's file is the larger one
    [(data, report)] = codec.api.encode_many([smooth], model=tiny_model, verify=True)
    assert data == learned and report.coder == "mgcf"
    assert report.bytes == report.learned_bytes == min(report.learned_bytes, report.classical_bytes)
    assert_same_pixels(codec.decode(data, model=tiny_model).pixels, smooth)


def test_a_tie_goes_to_jpeg_xl(monkeypatch, tiny_model):
    learned = len(codec.encode(NOISE, model=tiny_model, coder="learned"))
    classical = len(codec.encode(NOISE, coder="classical"))
    _bloated_jxl(monkeypatch, learned - classical)  # both files of the very same size
    [(_, report)] = codec.api.encode_many([NOISE], model=tiny_model)
    assert report.learned_bytes == report.classical_bytes == report.bytes == learned
    assert report.coder == "jxl-lossless"


def test_jxl_effort_is_used_and_checked(tiny_model):
    for effort in (1, 9):
        data = codec.encode(NOISE, model=tiny_model, jxl_effort=effort)
        jxl = imagecodecs.jpegxl_encode(NOISE, lossless=True, effort=effort)
        assert read_header(data)[1].require(b"DATA") == jxl
        assert_same_pixels(codec.decode(data).pixels, NOISE)
    for bad in (0, 11, 2.5, True):
        with pytest.raises(ValueError, match="effort"):
            codec.encode(NOISE, coder="classical", jxl_effort=bad)
        with pytest.raises(ValueError, match="effort"):
            fallback.jxl_encode(NOISE, bad)
    with pytest.raises(ValueError, match="coder"):
        codec.encode(NOISE, coder="mgcf")


# ---------------------------------------------------------------- adaptation defaults


def test_one_default_for_steps():
    from jobs import adaptargs
    from jobs.bench import codecs, command

    assert DEFAULT_STEPS == 0  # with calibration, T = 10 bought nothing on pkg13 (codec.defaults)
    assert AdaptConfig().steps == codec.api.DEFAULT_ADAPT.steps == codecs.Variant().steps == DEFAULT_STEPS
    assert CodecSettings().steps == DEFAULT_STEPS
    assert codec.api.DEFAULT_ADAPT.max_patches == adaptargs.DEFAULT_ADAPT_PATCHES == CodecSettings().adapt_patches
    assert AdaptConfig().min_pixels == MIN_ADAPT_PIXELS
    parser = command.add_parser(argparse.ArgumentParser().add_subparsers())
    assert parser.parse_args(["x"]).steps == [DEFAULT_STEPS]


def test_images_under_min_adapt_pixels_are_not_adapted(monkeypatch, tiny_model):
    calls = _no_adaptation(monkeypatch)
    assert NOISE.shape[0] * NOISE.shape[1] < MIN_ADAPT_PIXELS
    [(data, report)] = codec.api.encode_many([NOISE], model=tiny_model, coder="learned")  # the default adapt
    assert calls == [] and report.steps == 0 and report.adapters == "none" and "fine_tune_s" not in report.timings
    assert_same_pixels(codec.decode(data, model=tiny_model).pixels, NOISE)
    h, w = NOISE.shape[:2]
    for min_pixels, adapted in ((h * w + 1, False), (h * w, True)):  # the bound itself is adapted
        calls.clear()
        cfg = AdaptConfig(steps=1, min_pixels=min_pixels)
        if adapted:
            with pytest.raises(AssertionError, match="adapted"):
                codec.api.encode_many([NOISE], model=tiny_model, coder="learned", adapt=cfg)
            assert calls == [[NOISE.shape]]
        else:
            codec.api.encode_many([NOISE], model=tiny_model, coder="learned", adapt=cfg)
            assert calls == []


def test_auto_spends_no_adaptation_where_jpeg_xl_wins_anyway(monkeypatch, tiny_model):
    """The learned file of noise is far larger than JPEG-XL's: adapters (a few percent) cannot close
    that gap, so "auto" does not fine-tune at all, while "learned" does."""
    calls = _no_adaptation(monkeypatch)
    cfg = AdaptConfig(steps=2, min_pixels=0)
    [(data, report)] = codec.api.encode_many([NOISE], model=tiny_model, adapt=cfg)
    assert calls == [] and report.steps == 0 and report.coder == "jxl-lossless"
    assert report.learned_bytes * (1 - codec.api.ADAPT_REACH) > report.classical_bytes
    monkeypatch.undo()
    [(_, learned)] = codec.api.encode_many([NOISE], model=tiny_model, adapt=cfg, coder="learned")
    assert learned.steps == 2 and learned.adapters in ("kept", "dropped")


# ---------------------------------------------------------------- the command line


def test_cli_encode_default_is_no_larger_than_jpeg_xl(tmp_path):
    from jobs.cli import main

    src = tmp_path / "noise.png"
    src.write_bytes(_png(NOISE))
    out = tmp_path / "noise.cllc"
    assert main(["encode", str(src), str(out)]) == 0  # the shipped model, default codec and steps
    data = out.read_bytes()
    assert len(data) <= len(imagecodecs.jpegxl_encode(NOISE, lossless=True, effort=DEFAULT_JXL_EFFORT)) + 150
    assert len(data) <= len(codec.encode(read_image(src), coder="classical"))
    assert codec.info(data)["coder"] == "jxl-lossless"
    assert_same_pixels(codec.decode(data).pixels, NOISE)


def test_cli_codec_callic_and_jxl_effort(tmp_path, tiny_model_path):
    from jobs.cli import main

    src = tmp_path / "noise.png"
    src.write_bytes(_png(NOISE))
    model = ("--model", str(tiny_model_path), "--quiet")
    assert main(["encode", str(src), str(tmp_path / "l.cllc"), "--codec", "callic", *model]) == 0
    assert codec.info((tmp_path / "l.cllc").read_bytes())["coder"] == "mgcf"
    assert main(["encode", str(src), str(tmp_path / "e1.cllc"), "--jxl-effort", "1", *model]) == 0
    data = (tmp_path / "e1.cllc").read_bytes()
    assert read_header(data)[1].require(b"DATA") == imagecodecs.jpegxl_encode(NOISE, lossless=True, effort=1)
    assert main(["encode", str(src), str(tmp_path / "x.cllc"), "--jxl-effort", "11", *model]) == 64


# ---------------------------------------------------------------- archive jobs


def test_archive_default_keeps_jpeg_xl_for_noise_and_says_so(ray_cluster, tmp_path, tiny_model_path):
    from jobs.cli import main
    from pipeline import manifest
    from pipeline.storage import Store

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    (src / "noise.png").write_bytes(_png(NOISE))
    assert main(["archive", str(src), str(dst), "--job-id", "n", "--model", str(tiny_model_path), "--quiet"]) == 0
    [row] = manifest.read_all(Store(dst / "n")).to_pylist()
    assert row["status"] == "ok" and row["codec"] == "jxl-lossless" and manifest.facts(row) == {}
    stored = (dst / "n" / row["output_key"]).read_bytes()
    assert stored == codec.encode(read_image(src / "noise.png"), coder="classical")
    assert_same_pixels(codec.decode(stored).pixels, NOISE)
    spec = json.loads((dst / "n" / "job.json").read_text())["codec"]
    assert (spec["codec"], spec["jxl_effort"], spec["steps"]) == ("auto", DEFAULT_JXL_EFFORT, DEFAULT_STEPS)


@pytest.fixture(scope="module")
def settings(tiny_model_path, tiny_lossy_model_path) -> CodecSettings:
    return CodecSettings(model=str(tiny_model_path), lossy_model=str(tiny_lossy_model_path))


def _sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _archive_one(settings: CodecSettings, pixels: np.ndarray) -> tuple:
    arch = ArchiveCodec(settings, Resources("cpu", 1))
    data = _png(pixels)
    [enc] = arch.encode_batch([("noise.png", data)], verify=True)
    row = {**enc.fields, "source_key": "noise.png", "source_sha256": hashlib.sha256(data).hexdigest()}
    restored = read_image(arch.restore(enc.blob, row)).pixels
    return enc, restored


@pytest.mark.parametrize(("choice", "kept"), [("auto", "jxl-lossless"), ("callic", "callic"), ("cca", "jxl-lossless")])
def test_archive_codec_choices(settings, choice, kept):
    """auto keeps JPEG-XL for noise; callic forces the learned coder; cca codes RGBA (not lossy) as auto."""
    assert registry.codec_names()[0] == "auto" and CodecSettings().codec == "auto"
    enc, restored = _archive_one(dataclasses.replace(settings, codec=choice, steps=0), NOISE_RGBA)
    assert enc.fields["codec"] == kept
    assert_same_pixels(restored, NOISE_RGBA)


def test_an_old_job_spec_loads_and_callic_keeps_meaning_the_learned_coder(settings):
    old = {k: v for k, v in settings.to_dict().items() if k != "jxl_effort"} | {"codec": "callic", "steps": 0}
    loaded = CodecSettings.from_dict(old)  # what resume does with a job.json written before --jxl-effort
    assert loaded.jxl_effort == DEFAULT_JXL_EFFORT
    enc, restored = _archive_one(loaded, NOISE)
    assert enc.fields["codec"] == "callic" and enc.fields["codec_facts"] == {"model_hash": _sha256_of(loaded.model)}
    assert_same_pixels(restored, NOISE)


def test_archive_refuses_a_bad_jxl_effort(settings):
    with pytest.raises(UnsupportedError, match="effort"):
        ArchiveCodec(dataclasses.replace(settings, jxl_effort=0), Resources("cpu", 1))


def test_archive_flags_default_to_auto():
    from jobs import archive

    sub = argparse.ArgumentParser().add_subparsers()
    archive.add_parsers(sub)
    args = sub.choices["archive"].parse_args(["src", "dst"])
    assert (args.codec, args.jxl_effort, args.steps) == ("auto", DEFAULT_JXL_EFFORT, DEFAULT_STEPS)
    with pytest.raises(SystemExit):
        sub.choices["archive"].parse_args(["src", "dst", "--jxl-effort", "11"])


def test_archive_takes_every_coding_flag_encode_has_and_its_workers_use_them(tiny_model_path):
    """Settings once (issue 18): ``archive`` and ``encode`` share their coding flags, one default
    each; the job spec records them all and a worker's encoder adapts exactly as asked."""
    from codec.mgcf.adapters import AdapterSpec
    from jobs.adaptargs import coding_fields
    from jobs.archivecodec import open_encoder
    from jobs.cli import build_parser

    def flags(command: str) -> set[str]:
        sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        return {o for a in sub.choices[command]._actions for o in a.option_strings}

    coding = {"--steps", "--lr", "--adapt-order", "--adapt-layers", "--adapt-patches", "--adapt-min-pixels"}
    coding |= {"--adapt-stop-below", "--lora-rank", "--tucker-ranks", "--calibration", "--patches-per-stream"}
    assert coding | {"--jxl-effort"} <= flags("archive") & flags("encode")

    argv = ["archive", "src", "dst", "--steps", "3", "--lr", "0.01", "--adapt-order", "all", "--lora-rank", "1"]
    argv += ["--tucker-ranks", "1", "2", "2", "--adapt-min-pixels", "0", "--calibration", "0", "--model", "m"]
    args = build_parser().parse_args(argv)
    settings = CodecSettings(model=str(tiny_model_path), **coding_fields(args))
    spec = json.loads(json.dumps(settings.to_dict()))  # through a job.json
    again = CodecSettings.from_dict(spec)
    assert again == settings and again.tucker_ranks == (1, 2, 2)
    adapt = open_encoder(again, "cpu").adapt
    assert (adapt.steps, adapt.lr, adapt.order, adapt.min_pixels) == (3, 0.01, "all", 0)
    assert adapt.spec == AdapterSpec(1, (1, 2, 2)) and open_encoder(again, "cpu").settings.calibration == 0

    with pytest.raises(UnsupportedError, match="unknown field adapt_rank"):  # a renamed field: refused by name
        CodecSettings.from_dict(spec | {"adapt_rank": 2})
    bad = build_parser().parse_args([*argv[:5], "--lora-rank", "99"])  # adapting (--steps 3): ranks are checked
    with pytest.raises(CallicError, match="LoRA rank"):
        coding_fields(bad)
