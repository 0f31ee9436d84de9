"""What a long command shows while it works: one line per set-up phase, then a bar of images done
out of the run's total with elapsed time, images/s, ETA and failures.

Both go to stderr, and only where a person may read them: never with ``--quiet``, and never with
``--log-json`` (stderr is then JSON lines only; each phase is a ``phase_done`` event instead).
The callers poll their counts about once a second and ``tick`` the bar, so the elapsed time moves
while one slow image is being coded. When stderr is not a terminal (a log file, CI) a redrawn bar
would be one endless line of carriage returns, so the bar is a plain line instead, printed at
most every ``LINE_EVERY_S`` seconds and at the end.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from tqdm import tqdm

from pipeline import events

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} img [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


LINE_EVERY_S = 30.0


class ProgressBar:
    def __init__(self, total: int, enabled: bool = True, desc: str = "images") -> None:
        enabled = enabled and total > 0
        tty = sys.stderr.isatty()
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit="img",
            bar_format=BAR_FORMAT,
            disable=not enabled or not tty,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self._lines = enabled and not tty  # plain lines instead of a bar
        self._total, self._done, self._failed, self._desc = total, 0, 0, desc
        self._start = self._shown = time.monotonic()
        self._shown_done = -1

    def describe(self, desc: str) -> None:
        """Name the phase the bar is in (``starting workers``, ``archive``...)."""
        self._desc = desc
        self._bar.set_description_str(desc, refresh=True)

    def update(self, ok: int, failed: int) -> None:
        """Show ``ok + failed`` images done (at most the total: live counts may count a retried
        image twice)."""
        done = min(ok + failed, self._total)
        if done != self._bar.n:
            self._bar.update(done - self._bar.n)
        if failed != self._failed:
            self._bar.set_postfix(failed=failed, refresh=False)
        self._done, self._failed = done, failed
        self.tick()

    def tick(self) -> None:
        """Redraw: the elapsed time moves even when no image finished."""
        self._bar.refresh()
        if self._lines and self._done != self._shown_done and time.monotonic() - self._shown >= LINE_EVERY_S:
            self._line()

    def _line(self) -> None:
        self._shown, self._shown_done = time.monotonic(), self._done
        elapsed = tqdm.format_interval(self._shown - self._start)
        print(
            f"{self._desc}: {self._done}/{self._total} images, {self._failed} failed, {elapsed} elapsed",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self._lines and self._done != self._shown_done:
            self._line()
        self._bar.close()


@contextlib.contextmanager
def phase(what: str, enabled: bool) -> Iterator[None]:
    """``what...`` on stderr when it starts and ``what: done in N s`` when it ends (if
    ``enabled``), and always a ``phase_done`` event (a JSON line under ``--log-json``)."""
    start = time.perf_counter()
    if enabled:
        print(f"{what}...", file=sys.stderr, flush=True)
    yield
    seconds = time.perf_counter() - start
    if enabled:
        print(f"{what}: done in {seconds:.1f} s", file=sys.stderr, flush=True)
    events.emit("phase_done", phase=what, seconds=round(seconds, 3))
