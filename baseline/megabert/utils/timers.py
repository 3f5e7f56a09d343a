"""Wall-clock timers for the phases of a training step (data, forward/backward, optimizer, checkpoint).

Timers only read the host clock: they never synchronise the device, so timing the hot loop costs nothing. Over a
logging window the host runs at most a few kernels ahead, so window totals are accurate; per-phase splits
inside one step are approximate on an asynchronous device.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


class Timers:
    """Named accumulating timers: `with timers("data"): ...`; `timers.pop()` returns and resets the totals."""

    def __init__(self) -> None:
        self._totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._totals[name] += time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        self._totals[name] += seconds

    def pop(self) -> dict[str, float]:
        totals, self._totals = dict(self._totals), defaultdict(float)
        return totals
