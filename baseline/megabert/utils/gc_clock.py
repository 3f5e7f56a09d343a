"""How long Python's cyclic garbage collector has run in this process.

A collection stops every thread that wants the GIL, the training loop included, for as long as it scans; on a
host-bound step that time is lost to the device. The trainer reports it per log window (host/gc_seconds), so a
slowdown from garbage shows up as such instead of as unexplained noise.
"""

from __future__ import annotations

import gc
import time
from typing import Optional


class GcClock:
    """Cumulative seconds and collections per generation, from gc.callbacks while installed (install/remove,
    or as a context manager)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]  # per generation
        self._started: Optional[float] = None

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:  # "stop"
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1
            self._started = None

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def __enter__(self) -> "GcClock":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
