"""Stage the next micro-batches on a background thread while the device computes the current one.

Why: DeepSpeed's ZeRO optimizer synchronises the device at the end of every backward when it overlaps gradient
reduction with compute (`overlap_comm`, the right setting for data parallelism). After that sync the GPU idles
until the host has launched the next forward, so everything the host does between two micro-batches -- taking
the batch from the DataLoader worker (unpickling a shared-memory batch), page-locking its staging buffer, and
(when no worker did it) the unpadding bookkeeping and counting -- is time the GPU waits. Done here on a thread,
it overlaps with the previous micro-batch's compute and the training loop is left with one asynchronous copy.

    staged = StagedBatches(batches, stage_fn, depth=2)
    for item in staged: ...
    staged.close()

The thread only reads ahead: the data order is unchanged, and the batches it staged but nobody took are dropped
at close(), so the trainer's own consumed-samples count stays the single record of the data position.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Generic, Iterator, Optional, TypeVar

import torch

T = TypeVar("T")
S = TypeVar("S")

_END = object()  # the source is exhausted


class _Failure:
    """An exception raised on the staging thread, re-raised where the item would have been taken."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class StagedBatches(Generic[S]):
    """Iterates over `stage(item)` for the items of `source`, computed up to `depth` items ahead on a thread.

    depth 0 stages in the caller's thread (no thread at all): the same items, for debugging or for CPU-only
    runs where a spare core is not there to overlap with.
    """

    def __init__(self, source: Iterator[T], stage: Callable[[T], S], depth: int = 2,
                 device: Optional[torch.device] = None, on_close: Optional[Callable[[], None]] = None) -> None:
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self._source, self._stage, self._depth, self._on_close = source, stage, depth, on_close
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if depth > 0:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, args=(device,), name="megabert-stage-batches",
                                            daemon=True)
            self._thread.start()

    def __iter__(self) -> "StagedBatches[S]":
        return self

    def __next__(self) -> S:
        if self._thread is None:
            return self._stage(next(self._source))
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # later calls see the end too
            raise StopIteration
        if isinstance(item, _Failure):
            self._queue.put(item)
            raise RuntimeError(f"staging the next batch failed: {item.error!r}") from item.error
        return item

    def close(self, timeout: float = 30.0) -> None:
        """Calls `on_close` (it may unblock the source's producers), stops the thread (it finishes the item in
        hand) and drops what it staged. A thread still blocked on its source after `timeout` seconds is left
        behind (it is a daemon)."""
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
        if self._thread is None:
            self._close_source()
            return
        self._stopping.set()
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:  # unblock a put() on a full queue
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
        if not self._thread.is_alive():  # a thread left behind may still be inside the source
            self._close_source()
        self._thread = None
        self._source = iter(())

    def _close_source(self) -> None:
        """Closes a source that can be closed (a generator, a worker-backed data iterator): its workers stop now
        rather than whenever the source is collected."""
        close = getattr(self._source, "close", None)
        if close is not None:
            close()
        self._source = iter(())

    def _run(self, device: Optional[torch.device]) -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.set_device(device)  # pinned buffers belong to the training device's context
        try:
            for item in self._source:
                staged = self._stage(item)
                if not self._put(staged):
                    return
            self._put(_END)
        except BaseException as error:  # handed to the consumer, which raises it in the training loop
            self._put(_Failure(error))

    def _put(self, item) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False
