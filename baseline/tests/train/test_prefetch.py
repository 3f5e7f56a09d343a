"""The staging thread changes when a batch is prepared, never which batch or in what order."""

import itertools
import threading
import time

import pytest

from megabert.train.prefetch import StagedBatches


def test_staged_items_come_in_source_order_and_equal_inline_staging():
    stage = lambda x: (x, x * x)
    ahead = list(StagedBatches(iter(range(50)), stage, depth=3))
    inline = list(StagedBatches(iter(range(50)), stage, depth=0))
    assert ahead == inline == [(x, x * x) for x in range(50)]


def test_staging_runs_ahead_of_the_consumer():
    staged = []
    batches = StagedBatches(iter(range(10)), lambda x: staged.append(x) or x, depth=2)
    assert next(batches) == 0
    deadline = time.monotonic() + 5
    while len(staged) < 3 and time.monotonic() < deadline:  # item 0 taken, 1 and 2 queued
        time.sleep(0.01)
    assert staged[:3] == [0, 1, 2]
    batches.close()


def test_an_error_while_staging_is_raised_in_the_consumer_and_stays_raised():
    def source():
        yield 1
        raise ValueError("corrupt shard")

    batches = StagedBatches(source(), lambda x: x, depth=2)
    assert next(batches) == 1
    for _ in range(2):
        with pytest.raises(RuntimeError, match="corrupt shard"):
            next(batches)


def test_the_end_of_the_source_ends_the_iteration_every_time():
    batches = StagedBatches(iter([7]), lambda x: x, depth=2)
    assert list(batches) == [7]
    with pytest.raises(StopIteration):
        next(batches)


def test_close_stops_a_thread_blocked_on_a_full_queue():
    batches = StagedBatches(itertools.count(), lambda x: x, depth=1)
    next(batches)
    time.sleep(0.05)  # the thread now waits to put the next item
    before = threading.active_count()
    batches.close()
    assert threading.active_count() == before - 1
    batches.close()  # idempotent


def test_negative_depth_is_refused():
    with pytest.raises(ValueError, match="depth"):
        StagedBatches(iter(()), lambda x: x, depth=-1)
