"""Python's cyclic garbage collector, run when the trainer chooses instead of whenever allocations trigger it.

A collection stops every thread that wants the GIL, the training loop included, for as long as it scans; left
automatic, it fires at unpredictable steps. As torchtitan does, the trainer disables automatic collection for the
loop and collects the young generations every `interval` steps. The objects alive after setup (modules,
DeepSpeed's bookkeeping, imported libraries: millions of objects) are frozen out of the collector's reach first,
so a collection scans only what the loop allocated. Cyclic garbage is still collected, only at known steps.
"""

from __future__ import annotations

import gc
import time

from megabert.utils.logging import get_logger

log = get_logger(__name__)

DEFAULT_INTERVAL = 1000


class GarbageCollection:
    """with GarbageCollection(interval) as collector: ... collector.run(step) ...; automatic collection returns
    on exit."""

    def __init__(self, interval: int = DEFAULT_INTERVAL):
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.interval = interval
        self._was_enabled = gc.isenabled()

    def __enter__(self) -> "GarbageCollection":
        gc.collect()  # the garbage of setup, so nothing dead is frozen
        gc.freeze()
        gc.disable()
        return self

    def run(self, step: int) -> None:
        if step % self.interval == 0:
            start = time.perf_counter()
            gc.collect(1)
            log.debug("garbage collection at step %d: %.3f s", step, time.perf_counter() - start)

    def __exit__(self, *exc) -> None:
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()
