"""The cost of exactness: real .cllc size vs the float model's estimated size on the same images.

The float model's NLL (bits from likelihoods, an *estimate*) is what an inexact float coder could
at best reach; the .cllc file is what the exact integer path really writes (payload plus header,
streams and container overhead, reported separately).

    python bench/exactness_cost.py IMAGE [IMAGE ...] [--model FILE]
"""

from __future__ import annotations

import argparse
import struct

import numpy as np
import torch

import codec
from codec.header import read_header
from codec.images import read_image
from codec.mgcf.learned import patchify, real_masks, segments
from codec.mgcf.mixture import nll_bits
from codec.mgcf.weights import load_model_file
from codec.modelfiles import default_model_path


def float_bits(model, pixels: np.ndarray, patch: int) -> float:
    patches = patchify(pixels, patch).long()
    mask = real_masks(pixels.shape[0], pixels.shape[1], patch, segments(patches.shape[0], patches.shape[0])[0])
    total = 0.0
    with torch.no_grad():
        for s in range(0, patches.shape[0], 16):
            x = patches[s : s + 16]
            bits = nll_bits(model(x.permute(0, 3, 1, 2).double()), x.double(), model.cfg.mixtures)
            total += float(bits[mask[s : s + 16]].sum())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+")
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mf = load_model_file(args.model or default_model_path())
    fmodel = mf.float_model().double().eval()
    exact = codec.api.Model(mf.exact_model(), mf.digest)
    print(f"model {mf.digest.hex()[:16]}")
    print(f"{'image':28} {'float est. bpsp':>15} {'payload bpsp':>12} {'file bpsp':>10} {'payload +%':>10}")
    tot_float = tot_payload = tot_file = tot_n = 0.0
    for path in args.images:
        px = np.ascontiguousarray(read_image(path).pixels[..., :3])
        data = codec.encode(px, model=exact)
        _, container = read_header(data)
        body = container.require(b"DATA")
        (n,) = struct.unpack_from("<I", body)
        payload_bits = 8 * (len(body) - 4 - 4 * n)
        est = float_bits(fmodel, px, mf.cfg.patch)
        samples = px.size
        tot_float += est
        tot_payload += payload_bits
        tot_file += 8 * len(data)
        tot_n += samples
        print(
            f"{path[-28:]:28} {est / samples:15.4f} {payload_bits / samples:12.4f} {8 * len(data) / samples:10.4f} "
            f"{100 * (payload_bits / est - 1):10.3f}"
        )
    print(
        f"{'all':28} {tot_float / tot_n:15.4f} {tot_payload / tot_n:12.4f} {tot_file / tot_n:10.4f} "
        f"{100 * (tot_payload / tot_float - 1):10.3f}"
    )


if __name__ == "__main__":
    main()
