"""The driver's progress bar: images done out of the run's total, images/s, ETA, failures."""

from __future__ import annotations

import sys

from tqdm import tqdm


class ProgressBar:
    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar = tqdm(
            total=total, unit="img", disable=not enabled or total == 0, file=sys.stderr, dynamic_ncols=True
        )
        self._failed = -1

    def update(self, ok: int, failed: int) -> None:
        done = min(ok + failed, self._bar.total)
        if done != self._bar.n:
            self._bar.update(done - self._bar.n)
        if failed != self._failed:
            self._failed = failed
            self._bar.set_postfix(failed=failed, refresh=False)

    def close(self) -> None:
        self._bar.close()
