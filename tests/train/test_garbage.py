"""The loop's garbage collection: setup's survivors frozen out of the collector's scans, cycles still collected."""

import gc
import weakref

from megabert.train.garbage import GarbageCollection


class Node:
    pass


def _cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_setup_objects_are_frozen_and_cycles_made_in_the_loop_are_still_collected():
    setup_object = Node()
    dead_before = _cycle()
    with GarbageCollection():
        assert dead_before() is None, "setup's garbage was frozen instead of collected"
        assert gc.get_freeze_count() > 0 and gc.isenabled()
        assert not any(obj is setup_object for obj in gc.get_objects())  # out of the collector's reach
        made_in_loop = _cycle()
        gc.collect()
        assert made_in_loop() is None
    assert gc.get_freeze_count() == 0
