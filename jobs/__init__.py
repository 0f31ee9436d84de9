"""User-facing commands, wired from ``codec`` (compression) and ``pipeline`` (distribution)."""
