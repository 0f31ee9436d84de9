"""CALLIC's lossless coder (Content Adaptive Learning for Lossless Image Compression), read top to
bottom:

- ``config``: the model's configuration; ``wavefront``: the scan order and its causal masks;
- ``model``: MGCF, the Masked Gated ConvFormer in float (training, fine-tuning), with ``mixture``,
  the discretized logistic mixture its head parameterizes (the loss);
- ``quantize`` -> ``exact``: the float weights as integers, and the integer model that codes
  (kept apart: that split is the exactness guarantee), with ``tables``, the mixture's integer
  frequency tables, and ``calibration``, their backward-adaptive correction;
- ``learned``: patches, wavefront steps and segments, range coded;
- ``adapters`` and ``rpft``: per-image low-rank adapters and the fine-tuning that finds them
  (``calibration_loss``: the calibrated coder's bits, differentiable);
- ``weights``: the model file; ``coder``: one image's learned file, and its decoder.
"""
