"""Defaults shared by the command line, the archive jobs, the bench and the Python API.

One place, so that ``callic encode``, ``callic archive``, ``callic demo``, ``callic bench`` and
``codec.api.encode`` agree. This module imports nothing heavy (no torch, numpy or Ray): the CLI's
``--help`` reads it.

- ``DEFAULT_STEPS``: per-image adaptation steps (RPFT, ``codec.mgcf.rpft``) everywhere a user does not
  say otherwise: 0 since 2026-12-03 (it was 10). With calibration on (the default since issue 17),
  T = 10 adapted 8 of pkg13's photos on run2's model and every one dropped its adapters (the
  file with them was not smaller), at 5-14x (median 11x) the encode seconds of T = 0 (README, "Adaptation once
  the coder calibrates itself"). ``--steps N`` still adapts.
- ``MIN_ADAPT_PIXELS``: images with fewer pixels (height x width) are not adapted: their adapters
  rarely pay for their own bits (the section alone is about 3.6 KB), and fine-tuning costs 2-8x
  the encode time of the pre-trained model. Measured below.
- ``DEFAULT_JXL_EFFORT``: libjxl effort of the JPEG-XL lossless candidate (users may set 1..10,
  as ``cjxl -e``).
- ``DEFAULT_CALIBRATION``: the learned coder corrects its mixtures from the residuals already
  coded (``codec.mgcf.calibration``); 0 turns it off (files as earlier versions wrote them).
- ``DEFAULT_PATCHES_PER_STREAM``: patches per range-coder stream of the learned coder, for 64x64
  patches; ``patches_per_stream(P)`` scales it to keep the pixels per stream (and so the decoder's
  memory per stream, which grows with P x P) the same for a model of another patch size P.

Measurement for ``MIN_ADAPT_PIXELS`` (shipped model ``mgcf-bf281dbfc87821e6``, 10 steps, at most 32
patches per step, center crops of pkg13 photos; what ``codec.api.encode_many(..., coder="learned",
adapt=AdaptConfig(steps=10, max_patches=32))`` does, without the size gate)::

    OMP_NUM_THREADS=1 python bench/min_adapt_pixels.py 64,96,128,192,256 \\
        ~/.cache/callic/data/pkg13/{barbara,flower,motorcycle_left}.png   # and kodim23 at 128

    crop     size  bytes T=0  bytes T=10  adapters  saved   JPEG-XL e7  T=0 s  extra s
    barbara    64       5361        5361  dropped     0           4235    2.2     9.6
    barbara    96      12373       12373  dropped     0           9273    3.6    22.2
    barbara   128      23333       23333  dropped     0          17216    6.3    27.5
    barbara   192      56789       56789  dropped     0          41767   12.0    44.2
    barbara   256     103137      103137  dropped     0          75687   19.7   168.7
    flower     64       4693        4693  dropped     0           4501    1.5    15.7
    flower     96      10621       10621  dropped     0           9438   10.5    49.2
    flower    128      18573       18573  dropped     0          15828   35.5    70.2
    flower    192      40285       40285  dropped     0          33686   46.8   140.8
    flower    256      69945       68120  kept     -2.6%         57194   37.7   241.6
    motorcyc.  64       6217        6217  dropped     0           6221    6.7    23.3
    motorcyc.  96      13697       13697  dropped     0          13586   21.5    75.8
    motorcyc. 128      24317       24317  dropped     0          24194   23.6    84.1
    motorcyc. 192      54673       54673  dropped     0          53824   38.9   149.7
    motorcyc. 256      96117       96117  dropped     0          94441   99.9   303.9
    kodim23   128      18013       18013  dropped     0          17018    4.6    26.4

(seconds on a 2-core machine shared with a training run and other tests: only their ratio means
much). Adapters were kept on 1 of these 16 crops, and on none under 256 x 256. Whole pkg13 photos
at T = 10 (``docs/bench-adapt-pkg13.md``, ``--adapt-patches 16``) keep them on 9 of the 12 of at
least 240,000 pixels, and drop them on the one below (chelsea, 451 x 300 = 135,300). So adaptation
starts to pay on most images between 135,300 and 240,000 pixels: the threshold is 200,000 (about
500 x 400). Not measured: sizes between 256 x 256 and 451 x 300, other step counts.
"""

from __future__ import annotations

import os

DEFAULT_STEPS = 0
MIN_ADAPT_PIXELS = 200_000
DEFAULT_JXL_EFFORT = 7
JXL_EFFORTS = range(1, 11)
DEFAULT_PATCHES_PER_STREAM = 64
MAX_PATCHES_PER_STREAM = 4096  # the most a file may declare (the decoder's memory bound)
# Memory for a decoder's caches, both learned coders': patches (or rows) decoded together, and the
# largest segment a file may need (``CALLIC_DECODER_MEMORY`` raises it on a machine that has more).
DEFAULT_DECODER_MEMORY = 2 << 30
DECODER_BATCH_BYTES = int(os.environ.get("CALLIC_DECODER_MEMORY", DEFAULT_DECODER_MEMORY))
# Backward-adaptive calibration of the learned coder (``codec.mgcf.calibration``): the scheme new files
# are written with (0: none). Files record theirs in a CALB section.
DEFAULT_CALIBRATION = 1
CALIBRATION_SCHEMES = (0, 1)


def patches_per_stream(patch: int) -> int:
    """The default patches per stream for P x P patches: 64 up to P = 64, 16 at P = 128, 4 at 256."""
    return max(1, min(DEFAULT_PATCHES_PER_STREAM, DEFAULT_PATCHES_PER_STREAM * 64 * 64 // (patch * patch)))


# Adaptation's other defaults (``codec.mgcf.rpft.AdaptConfig``, ``codec.mgcf.adapters.AdapterSpec``), here so
# that the CLI's flags show them without importing torch.
DEFAULT_ADAPT_PATCHES = 32  # most patches an image trains on per step (``--adapt-patches``)
DEFAULT_ADAPT_LR = 2e-3
DEFAULT_LORA_RANK = 2
DEFAULT_TUCKER_RANKS = (2, 3, 3)
# Corpus adaptation (``callic archive --adapt-corpus``, ``codec.mgcf.corpus``): sample images and steps.
DEFAULT_CORPUS_SAMPLE = 16
DEFAULT_CORPUS_STEPS = 150
