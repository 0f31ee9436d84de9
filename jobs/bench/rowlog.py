"""A benchmark's finished rows, kept on disk as they are made, so that a killed run can resume.

``rows.jsonl``: the first line is ``{"settings": {...}}`` (everything besides the image and the
codec name that decides a row's numbers: model hash, device, threads, adaptation flags); each
further line is one finished row, appended and flushed to disk before the next run starts. A
half-written last line (the process was killed while writing it) is ignored on reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from codec.errors import CallicError

Row = dict[str, Any]
NAME = "rows.jsonl"
Key = Callable[[Row], tuple[str, str]]


def image_and_codec(row: Row) -> tuple[str, str]:
    return row["image"], row["codec"]


class SettingsMismatch(CallicError):
    """``--resume`` into a folder whose rows were made with other settings (a usage error)."""

    exit_code = 64


class RowLog:
    """Append-only log of rows in ``folder``/``name``; ``done`` holds every finished row by its
    ``key`` (image and codec; the lossy bench: image and codec@setting): those of earlier runs
    (resume) and those added since."""

    def __init__(
        self, folder: Path, settings: dict[str, Any], resume: bool, name: str = NAME, key: Key = image_and_codec
    ) -> None:
        self.path, self.key = Path(folder) / name, key
        self.done: dict[tuple[str, str], Row] = {}
        if resume and self.path.exists():
            self.done = _read(self.path, settings, key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w") as f:  # rewritten whole: drops a torn last line
            for line in [{"settings": settings}, *self.done.values()]:
                f.write(json.dumps(line) + "\n")
            _flush(f)

    def add(self, row: Row) -> None:
        self.done[self.key(row)] = row
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            _flush(f)


def _flush(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _read(path: Path, settings: dict[str, Any], key: Key) -> dict[tuple[str, str], Row]:
    lines = path.read_text().splitlines()
    try:
        found = json.loads(lines[0])["settings"] if lines else None
    except (json.JSONDecodeError, KeyError, TypeError):
        found = None
    if found != settings:
        raise SettingsMismatch(
            f"{path} was made with other settings ({found}, now {settings}): "
            "use another --out, or run without --resume to start over"
        )
    rows: dict[tuple[str, str], Row] = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
            rows[key(row)] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # the torn line of a killed run: that pair runs again
    return rows
