"""``callic bench``: callic's codecs measured against the classic ones, on the same pixels, in the
same run. The lossless bench (``command``, its table of codecs and settings) and the lossy one
(``lossy``) share their parts:

- ``images``: the input (folders and fsspec URLs, 8-bit RGB pixels);
- ``anchors``: the classic coders at their strongest standard settings;
- ``codecs``: the codecs under test, the registry's ones run once per variant;
- ``measure``: one image through one codec, real bytes, median seconds, an exact round trip;
- ``runners``: in this process or on Ray actors (``pipeline.pool``), rows logged as they are made
  (``rowlog``, for ``--resume``);
- ``report``: summary, Markdown, Parquet and plot; ``quality`` (PSNR, MS-SSIM) and ``bdrate``
  for the lossy curves.
"""
