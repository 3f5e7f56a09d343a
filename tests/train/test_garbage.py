"""The trainer's garbage collection: automatic collection off inside, cycles collected at the chosen steps."""

import gc
import weakref

import pytest

from megabert.train.garbage import GarbageCollection


class Node:
    pass


def _cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_cycles_are_collected_only_at_the_interval_and_automatic_collection_returns_after():
    assert gc.isenabled()
    with GarbageCollection(interval=3) as collector:
        assert not gc.isenabled()
        ref = _cycle()
        for _ in range(5000):  # would trigger automatic collections if they were on
            Node()
        collector.run(2)
        assert ref() is not None, "collected between intervals"
        collector.run(3)
        assert ref() is None, "not collected at the interval"
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_the_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval"):
        GarbageCollection(0)
