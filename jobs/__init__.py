"""User-facing commands, wired from ``codec`` (compression) and ``pipeline`` (distribution)."""

import os

# Before anything imports torch (its OpenMP reads this once, when it loads): waiting threads
# sleep instead of spinning, so a busy core elsewhere does not stall every parallel region
# (see jobs/runtime.py). A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
