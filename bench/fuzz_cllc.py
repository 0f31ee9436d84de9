"""Fuzz the decoder with files whose CRCs are all valid: every case either decodes exactly or is
refused with a ``CallicError``; anything else (another exception, a crash, a timeout, memory past
the limit, or different pixels returned) is BAD.

    OMP_NUM_THREADS=1 python bench/fuzz_cllc.py --cases 2000 [--seed 0] [--out fuzz.json]

Seeds are small valid files made with tiny random models (written to a temporary model folder):
learned RGB in several streams, RGBA (ALPH), RGB with adapters (ADPT), 8-bit gray and 16-bit RGB
(JPEG-XL), a palette image (PLTE), float32 (zlib) and, with a tiny CCA model, a lossy file. A case
is a seed with one to three mutations: a HEAD field (coder, size, channels, sample type, mode,
hashes, patch, patches per stream), a section payload (bit flips, overwritten bytes, truncation,
extension), the mgcf stream table (count, lengths, empty or cut streams), a larger claimed size
with a stream table to match (``_claim``), or the sections
themselves (dropped, duplicated, reordered, swapped with another seed's, unknown tags); then
every CRC is recomputed. Cases run in a worker process under ``RLIMIT_AS`` with a per-case
timeout; each case's peak RSS is read from ``VmHWM`` after a reset through ``/proc/self/clear_refs``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SIGNATURE = b"CLLC\r\n\x1a\n"
_HEAD = struct.Struct("<BIIBB")
_TAIL = struct.Struct("<32s32sHH")


# ---------------------------------------------------------------- files as sections


@dataclass
class File:
    """A ``.cllc`` file as its version and sections, re-sealed with fresh CRCs by ``to_bytes``."""

    version: bytes
    sections: list[tuple[bytes, bytes]]

    @classmethod
    def parse(cls, data: bytes) -> File:
        pos, sections = len(SIGNATURE) + 2, []
        while True:
            tag, length = struct.unpack_from("<4sI", data, pos)
            if tag == b"END ":
                return cls(data[len(SIGNATURE) : len(SIGNATURE) + 2], sections)
            sections.append((tag, data[pos + 8 : pos + 8 + length]))
            pos += 12 + length

    def to_bytes(self) -> bytes:
        out = [SIGNATURE, self.version]
        for tag, payload in [*self.sections, (b"END ", b"")]:
            head = struct.pack("<4sI", tag, len(payload))
            out += [head, payload, struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))]
        return b"".join(out)


def unpack_head(payload: bytes) -> dict:
    coder, h, w, c, dt = _HEAD.unpack_from(payload, 0)
    n = payload[_HEAD.size]
    mode = payload[_HEAD.size + 1 : _HEAD.size + 1 + n]
    ph, mh, patch, per = _TAIL.unpack_from(payload, _HEAD.size + 1 + n)
    return dict(coder=coder, h=h, w=w, c=c, dt=dt, mode=mode, ph=ph, mh=mh, patch=patch, per=per)


def pack_head(f: dict) -> bytes:
    return (
        _HEAD.pack(f["coder"], f["h"], f["w"], f["c"], f["dt"])
        + bytes([len(f["mode"])])
        + f["mode"]
        + _TAIL.pack(f["ph"], f["mh"], f["patch"], f["per"])
    )


# ---------------------------------------------------------------- mutations

_SIZES = [0, 1, 2, 3, 7, 8, 9, 63, 64, 65, 4096, 18000, 65535, 1 << 20, (1 << 32) - 1]
_MODES = [b"RGB", b"RGBA", b"L", b"LA", b"P", b"1", b"I;16", b"I", b"F", b"CMYK", b"", b"RGBX", b"\xff\xfe"]


def _head_field(rng: random.Random, f: File, others: list[File]) -> str:
    i = next(k for k, (t, _) in enumerate(f.sections) if t == b"HEAD")
    h = unpack_head(f.sections[i][1])
    key = rng.choice(["coder", "h", "w", "hw", "c", "dt", "mode", "ph", "mh", "patch", "per"])
    if key == "coder":
        h["coder"] = rng.randrange(6)
    elif key in ("h", "w"):
        h[key] = rng.choice(_SIZES + [h[key] + rng.choice([-1, 1])]) % (1 << 32)
    elif key == "hw":
        h["h"], h["w"] = h["w"], h["h"]
    elif key == "c":
        h["c"] = rng.randrange(18)
    elif key == "dt":
        h["dt"] = rng.randrange(7)
    elif key == "mode":
        h["mode"] = rng.choice(_MODES)
    elif key == "ph":
        h["ph"] = bytes(32) if rng.random() < 0.3 else _flip(rng, h["ph"], 1)
    elif key == "mh":
        h["mh"] = rng.choice(
            [bytes(32), _flip(rng, h["mh"], 1), *(unpack_head(o.sections[0][1])["mh"] for o in others)]
        )
    elif key == "patch":
        h["patch"] = rng.choice([0, 1, 7, 8, 9, 64, 65535, h["patch"]])
    else:
        h["per"] = rng.choice([0, 1, 2, 3, 64, 4096, 4097, 65535, rng.randrange(1 << 16)])
    f.sections[i] = (b"HEAD", pack_head(h))
    return f"head.{key}"


def _flip(rng: random.Random, data: bytes, flips: int) -> bytes:
    if not data:
        return data
    b = bytearray(data)
    for _ in range(flips):
        k = rng.randrange(len(b) * 8)
        b[k // 8] ^= 1 << (k % 8)
    return bytes(b)


def _payload(rng: random.Random, f: File, others: list[File]) -> str:
    i = rng.randrange(len(f.sections))
    tag, p = f.sections[i]
    kind = rng.choice(["flip", "flip", "bytes", "truncate", "extend", "zero_tail"])
    if kind == "flip":
        p = _flip(rng, p, rng.choice([1, 1, 2, 8, 64]))
    elif kind == "bytes" and p:
        b = bytearray(p)
        for _ in range(rng.choice([1, 4, 16])):
            b[rng.randrange(len(b))] = rng.choice([0, 0xFF, rng.randrange(256)])
        p = bytes(b)
    elif kind == "truncate":
        p = p[: rng.randrange(len(p) + 1)]
    elif kind == "extend":
        p = p + bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 100])))
    elif p:
        cut = rng.randrange(len(p))
        p = p[:cut] + bytes(len(p) - cut)
    f.sections[i] = (tag, p)
    return f"payload.{kind}.{tag.decode(errors='replace').strip()}"


def _stream_table(rng: random.Random, f: File, others: list[File]) -> str:
    i = next((k for k, (t, _) in enumerate(f.sections) if t == b"DATA"), None)
    if i is None:
        return "streams.none"
    data = f.sections[i][1]
    if unpack_head(f.sections[0][1])["coder"] != 1 or len(data) < 4:
        return _payload(rng, f, others)
    (n,) = struct.unpack_from("<I", data, 0)
    lengths = list(struct.unpack_from(f"<{n}I", data, 4))
    streams, pos = [], 4 + 4 * n
    for length in lengths:
        streams.append(data[pos : pos + length])
        pos += length
    kind = rng.choice(["count", "length", "empty", "cut", "words", "swap", "drop", "grow"])
    j = rng.randrange(n)
    if kind == "count":
        table = struct.pack(f"<I{n}I", rng.choice([0, n - 1, n + 1, 1 << 30]), *lengths)
        f.sections[i] = (b"DATA", table + b"".join(streams))
        return "streams.count"
    if kind == "length":
        lengths[j] = rng.choice([0, lengths[j] + 1, max(0, lengths[j] - 4), 1 << 31])
        f.sections[i] = (b"DATA", struct.pack(f"<I{n}I", n, *lengths) + b"".join(streams))
        return "streams.length"
    if kind == "empty":
        streams[j] = b""
    elif kind == "cut":
        streams[j] = streams[j][: 4 * rng.randrange(len(streams[j]) // 4 + 1)]
    elif kind == "words":
        streams[j] = bytes(4 * rng.choice([1, 2]))
    elif kind == "swap" and n > 1:
        k = rng.randrange(n)
        streams[j], streams[k] = streams[k], streams[j]
    elif kind == "drop":
        streams = [s for k, s in enumerate(streams) if k != j]
    else:
        streams[j] = streams[j] + bytes(4 * rng.choice([1, 100]))
    f.sections[i] = (b"DATA", struct.pack(f"<I{len(streams)}I", len(streams), *map(len, streams)) + b"".join(streams))
    return f"streams.{kind}"


def _sections(rng: random.Random, f: File, others: list[File]) -> str:
    kind = rng.choice(["drop", "duplicate", "reorder", "swap", "unknown", "version"])
    if kind == "version":
        f.version = struct.pack("<H", rng.choice([0, 1, 2, 3, 65535]))
        return "sections.version"
    i = rng.randrange(len(f.sections))
    if kind == "drop":
        del f.sections[i]
    elif kind == "duplicate":
        f.sections.insert(rng.randrange(len(f.sections) + 1), f.sections[i])
    elif kind == "reorder":
        j = rng.randrange(len(f.sections))
        f.sections[i], f.sections[j] = f.sections[j], f.sections[i]
    elif kind == "swap":
        other = rng.choice(others)
        tag = f.sections[i][0]
        found = [p for t, p in other.sections if t == tag]
        if found:
            f.sections[i] = (tag, found[0])
    else:
        f.sections.insert(rng.randrange(1, len(f.sections) + 1), (rng.choice([b"ZZZZ", b"zzzz", b"ALPH"]), b"\x01" * 5))
    return f"sections.{kind}"


def _claim(rng: random.Random, f: File, others: list[File]) -> str:
    """An mgcf file claiming another size, with a stream table that fits the claim: streams of zero
    or one word (what the hostile files do) for sizes up to 18000, or the seed's first stream
    repeated for small sizes (such a file is as costly to decode as its bytes justify: a noise
    image's worth of symbols, slow with a random model, so it stays small)."""
    h = unpack_head(f.sections[0][1])
    i = next(k for k, (t, _) in enumerate(f.sections) if t == b"DATA")
    if h["coder"] != 1 or not h["patch"]:
        return _head_field(rng, f, others)
    kind = rng.choice(["copy", "empty", "word"])
    sizes = [1, 16, 40] if kind == "copy" else [64, 300, 4096, 18000]
    h["h"], h["w"] = rng.choice(sizes), rng.choice(sizes)
    patches = -(-h["h"] // h["patch"]) * -(-h["w"] // h["patch"])
    h["per"] = max(rng.choice([1, 64, 4096]), -(-patches // 4096))
    n = -(-patches // h["per"])
    data = f.sections[i][1]
    (count, first) = struct.unpack_from("<II", data, 0)
    stream = {"copy": data[4 + 4 * count : 4 + 4 * count + first], "empty": b"", "word": bytes(4)}[kind]
    f.sections[0] = (b"HEAD", pack_head(h))
    f.sections[i] = (b"DATA", struct.pack(f"<I{n}I", n, *[len(stream)] * n) + stream * n)
    return f"claim.{kind}"


MUTATIONS = [_head_field, _head_field, _payload, _payload, _stream_table, _sections, _claim]


def mutate(rng: random.Random, seed: bytes, others: list[bytes]) -> tuple[bytes, str]:
    """One case: ``seed`` with 1-3 mutations, every CRC recomputed."""
    f = File.parse(seed)
    other_files = [File.parse(o) for o in others]
    names = [_apply(rng.choice(MUTATIONS), rng, f, other_files) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    return f.to_bytes(), "+".join(names)


def _apply(mutation, rng: random.Random, f: File, others: list[File]) -> str:
    """A mutation that needs a HEAD or stream table an earlier one broke becomes a payload one."""
    try:
        return mutation(rng, f, others)
    except (struct.error, StopIteration, IndexError, ValueError):
        return _payload(rng, f, others) if f.sections else _sections(rng, f, others)


# ---------------------------------------------------------------- seeds


def make_seeds(model_dir: Path) -> dict[str, bytes]:
    """Small valid files of every kind, with tiny random models installed in ``model_dir``."""
    import numpy as np
    import torch
    from PIL import Image

    import codec
    from codec.api import encode_many
    from codec.cca.api import encode_lossy, load_lossy_model
    from codec.cca.config import CCAConfig
    from codec.cca.model import CCAModel
    from codec.cca.weights import save_model as save_lossy
    from codec.errors import CallicError
    from codec.images import read_image
    from codec.mgcf.config import MGCFConfig
    from codec.mgcf.model import MGCF
    from codec.mgcf.rpft import AdaptConfig
    from codec.mgcf.weights import save_model

    torch.manual_seed(0)
    net = MGCF(MGCFConfig.tiny())
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)  # sharp enough predictions, as the tests' tiny model
    model = codec.load_model(str(save_model(net.eval(), model_dir)))
    rng = np.random.default_rng(0)
    photo = read_image(Path(__file__).resolve().parents[1] / "jobs" / "samples" / "kodim23-crop.png").pixels
    palette = Image.fromarray(rng.integers(0, 4, (6, 7), dtype=np.uint8), "P")
    palette.putpalette([10, 20, 30, 200, 100, 0, 0, 255, 0, 9, 9, 9])
    seeds = {
        "rgb": codec.encode(photo[:13, :17], model=model, patches_per_stream=2),
        "rgba": codec.encode(rng.integers(0, 256, (9, 11, 4), dtype=np.uint8), model=model),
        "gray": codec.encode(rng.integers(0, 256, (10, 12), dtype=np.uint8), model=model),
        "rgb16": codec.encode(rng.integers(0, 65536, (4, 5, 3), dtype=np.uint16), model=model),
        "palette": codec.encode(palette, model=model),
        "float": codec.encode(rng.standard_normal((5, 6)).astype(np.float32), model=model),
    }
    torch.manual_seed(0)
    try:
        lossy = load_lossy_model(save_lossy(CCAModel(CCAConfig.tiny()).eval(), 1.0, model_dir))
        seeds["lossy"] = encode_lossy(photo[:16, :16], model=lossy)
    except CallicError as exc:  # reported, so that a run without it is visible
        print(f"no lossy seed: {exc}", file=sys.stderr)
    [(adapted, report)] = encode_many(
        [np.ascontiguousarray(photo[:48, :72])], model=model, adapt=AdaptConfig(steps=8, lr=1e-2)
    )
    if report.adapters == "kept":
        seeds["adapted"] = adapted
    return seeds


# ---------------------------------------------------------------- worker

_WORKER = r"""
import json, resource, sys, time, traceback
import numpy as np
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import torch
torch.set_num_threads(1)
import codec
from codec.errors import CallicError
seeds = json.load(open(sys.argv[1]))
reference = {k: codec.decode(open(v, "rb").read()) for k, v in seeds.items()}

def same(a, b):
    return (a.pixels.dtype == b.pixels.dtype and a.pixels.shape == b.pixels.shape
            and np.array_equal(a.pixels, b.pixels) and a.mode == b.mode and a.palette == b.palette
            and a.palette_mode == b.palette_mode and a.transparency == b.transparency)

def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0

print(json.dumps({"ready": True, "rss_kb": hwm_kb()}), flush=True)
for line in sys.stdin:
    seed, path = json.loads(line)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = time.perf_counter()
    try:
        out = codec.decode(open(path, "rb").read())
        outcome, detail = ("exact", "") if same(out, reference[seed]) else ("bad", "wrong image returned")
    except CallicError as exc:
        outcome, detail = "rejected", type(exc).__name__ + ": " + str(exc)[:200]
    except BaseException as exc:
        outcome, detail = "bad", "".join(traceback.format_exception_only(exc)).strip()[:500]
    print(json.dumps({"outcome": outcome, "detail": detail, "seconds": time.perf_counter() - start,
                      "hwm_kb": hwm_kb()}), flush=True)
"""


class Worker:
    """A decoding process that takes cases one by one; restarted after a crash or a timeout."""

    def __init__(self, seeds_json: Path, memory_limit: int, env: dict[str, str]):
        self.args = [sys.executable, "-c", _WORKER, str(seeds_json), str(memory_limit)]
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.baseline_mb = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self.env)
        ready = json.loads(self.proc.stdout.readline())
        assert ready.get("ready"), ready
        self.baseline_mb = ready["rss_kb"] / 1024

    def run(self, seed: str, path: Path, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(json.dumps([seed, str(path)]) + "\n")
        self.proc.stdin.flush()
        reply = _readline(self.proc, timeout)
        if reply is None:
            code = self.proc.poll()
            self.stop()
            why = "timeout" if code is None else f"worker died (exit {code})"
            return {"outcome": "bad", "detail": why, "seconds": timeout if code is None else 0.0, "hwm_kb": 0}
        return json.loads(reply)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _readline(proc: subprocess.Popen, timeout: float) -> str | None:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return None
    line = proc.stdout.readline()
    return line or None


# ---------------------------------------------------------------- the run


@dataclass
class Summary:
    cases: int = 0
    counts: Counter = field(default_factory=Counter)
    worst_seconds: float = 0.0
    worst_seconds_case: str = ""
    peak_rss_mb: float = 0.0
    peak_rss_case: str = ""
    baseline_rss_mb: float = 0.0
    bad: list[dict] = field(default_factory=list)
    by_mutation: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "cases": self.cases,
            "counts": dict(self.counts),
            "worst_seconds": round(self.worst_seconds, 3),
            "worst_seconds_case": self.worst_seconds_case,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_rss_case": self.peak_rss_case,
            "worker_baseline_rss_mb": round(self.baseline_rss_mb, 1),
            "bad": self.bad,
        }


def run(
    cases: int, seed: int = 0, timeout: float = 20.0, memory_limit: int = 6 << 30, keep: Path | None = None
) -> Summary:
    """Fuzz ``cases`` cases; BAD cases are written to ``keep`` (if given) for replay."""
    rng = random.Random(seed)
    summary = Summary()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        saved = os.environ.get("CALLIC_MODEL_PATH")
        os.environ["CALLIC_MODEL_PATH"] = os.pathsep.join(p for p in (tmp, saved) if p)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        try:
            seeds = make_seeds(tmp_path)
        finally:
            if saved is None:
                del os.environ["CALLIC_MODEL_PATH"]
            else:
                os.environ["CALLIC_MODEL_PATH"] = saved
        paths = {}
        for name, data in seeds.items():
            paths[name] = tmp_path / f"seed-{name}.cllc"
            paths[name].write_bytes(data)
        (tmp_path / "seeds.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}))
        worker = Worker(tmp_path / "seeds.json", memory_limit, env)
        worker.start()
        summary.baseline_rss_mb = worker.baseline_mb
        names = sorted(seeds)
        try:
            for n in range(cases):
                name = names[n % len(names)]
                data, what = mutate(rng, seeds[name], [seeds[o] for o in names if o != name])
                case_path = tmp_path / "case.cllc"
                case_path.write_bytes(data)
                result = worker.run(name, case_path, timeout)
                _record(summary, f"{n}:{name}:{what}", result, data, keep)
                summary.by_mutation[(what.split("+")[0].split(".")[0], result["outcome"])] += 1
        finally:
            worker.stop()
    return summary


def _record(summary: Summary, case: str, result: dict, data: bytes, keep: Path | None) -> None:
    summary.cases += 1
    summary.counts[result["outcome"]] += 1
    if result["seconds"] > summary.worst_seconds:
        summary.worst_seconds, summary.worst_seconds_case = result["seconds"], case
    if result["hwm_kb"] / 1024 > summary.peak_rss_mb:
        summary.peak_rss_mb, summary.peak_rss_case = result["hwm_kb"] / 1024, case
    if result["outcome"] == "bad":
        summary.bad.append({"case": case, "detail": result["detail"]})
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"bad-{case.split(':')[0]}.cllc").write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per case")
    ap.add_argument("--memory-limit", type=int, default=6 << 30, help="RLIMIT_AS of the worker, bytes")
    ap.add_argument("--keep", type=Path, help="folder for the BAD cases' files")
    ap.add_argument("--out", type=Path, help="write the summary as JSON here")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    summary = run(args.cases, args.seed, args.timeout, args.memory_limit, args.keep)
    report = summary.as_dict() | {"wall_seconds": round(time.perf_counter() - start, 1)}
    report["self_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = json.dumps(report, indent=1)
    print(text)
    for (kind, outcome), count in sorted(summary.by_mutation.items()):
        print(f"{kind:10s} {outcome:9s} {count}", file=sys.stderr)
    if args.out:
        args.out.write_text(text)
    return 1 if summary.bad else 0


if __name__ == "__main__":
    sys.exit(main())
