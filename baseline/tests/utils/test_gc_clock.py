"""GcClock counts the garbage collector's own runs: time and generation, only while installed."""

import gc

from megabert.utils.gc_clock import GcClock


def test_gc_clock_counts_collections_and_their_time_only_while_installed():
    with GcClock() as clock:
        garbage = [[] for _ in range(1000)]
        for a, b in zip(garbage, garbage[1:]):  # reference cycles: only the cyclic collector frees them
            a.append(b)
            b.append(a)
        del garbage, a, b
        gc.collect(2)
        gc.collect(0)
    assert clock.collections[2] >= 1 and clock.collections[0] >= 1
    assert clock.seconds > 0
    counted = (clock.seconds, list(clock.collections))
    gc.collect()
    assert (clock.seconds, clock.collections) == counted  # removed from gc.callbacks on exit
