"""Hand staged micro-batches from DataLoader workers to the training process through shared-memory slots made once.

Why: a tensor a DataLoader worker returns normally travels as a fresh shared-memory segment. The worker creates
and fills it; the training process receives its file descriptor over a socket (an authenticated handshake in
Python, holding the GIL), maps it, faults its pages in on first touch, copies it into page-locked memory and
unmaps it -- for every micro-batch, on the staging thread that shares the GIL with the training loop. Here the
slots are allocated once, before the workers start, and every worker sees them. A worker writes its staged batch
into one of its own slots and sends back only a SlotRef (slot number and layout: a few hundred pickled bytes); the
training process copies the slot (already mapped, its pages long resident) and frees it at once.

    slots = SharedSlots(workers=2, slots_per_worker=6, slot_numel=staged_numel_bound(micro, seq_len))
    transform = slots.writer(stage)     # runs in the worker: batch -> stage -> (counts, SlotRef)
    staged = slots.take(ref, pin=True)  # the training process: SlotRef -> StagedInputs, page-locked; slot freed
    slots.close()                       # a worker waiting for a free slot gives up

Every SlotRef must be taken, in the order the DataLoader yields them (a dropped one keeps its slot, and its
worker waits for it until the slots are closed). take_staged does it for the trainer's staging thread.

Protocol: worker w owns slots [w * per_worker, (w + 1) * per_worker) and fills them in turn; before writing one it
waits until the training process has freed it. The training process takes items in the DataLoader's order (oldest
first) and frees each slot when it has copied it. A worker waiting for its slot therefore waits for an item older
than the one it writes, which the consumer takes before it needs the new one: it cannot deadlock, whatever the
number of slots; more slots only let workers run further ahead. Each write bumps the slot's ticket, and `take`
checks the ticket, so a slot overwritten before it was read fails loudly instead of training on the wrong batch.
"""

from __future__ import annotations

import os
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from megabert.model.inputs import StagedInputs

FREE, FULL = 0, 1
WAIT_POLL_S = 0.0005  # a worker only waits when it is a whole ring ahead of the consumer: latency is irrelevant


class SlotsClosed(RuntimeError):
    """The consumer is gone (its pipeline closed, or its process died) while a worker waited for a slot."""


@dataclass(frozen=True)
class SlotRef:
    """What a worker sends back instead of the staged buffer: where it is, and how to unpack it."""

    slot: int
    ticket: int
    numel: int
    layout: list  # StagedInputs.layout
    unpadded: Any  # StagedInputs.unpadded (numbers only)


class SharedSlots:
    """`workers * slots_per_worker` slots of `slot_numel` int64 in shared memory, with a state and a ticket each."""

    def __init__(self, workers: int, slots_per_worker: int, slot_numel: int):
        if workers < 1 or slots_per_worker < 1 or slot_numel < 1:
            raise ValueError(f"SharedSlots needs workers, slots_per_worker and slot_numel >= 1, got {workers}, "
                             f"{slots_per_worker}, {slot_numel}")
        self.workers, self.per_worker, self.slot_numel = workers, slots_per_worker, slot_numel
        count = workers * slots_per_worker
        try:
            self.data = torch.zeros(count, slot_numel, dtype=torch.int64).share_memory_()  # pages touched now
        except RuntimeError as e:
            raise RuntimeError(f"could not allocate {count * slot_numel * 8 / 2 ** 20:.1f} MiB of shared memory for "
                               f"the DataLoader workers' hand-over slots ({count} x {slot_numel} int64): is /dev/shm "
                               f"too small (a container's default is 64 MB)? Enlarge it (docker --shm-size) or lower "
                               f"data.num_workers or the micro-batch. ({e})") from e
        self.state = torch.zeros(count, dtype=torch.int64).share_memory_()  # FREE / FULL
        self.tickets = torch.zeros(count, dtype=torch.int64).share_memory_()  # writes so far, per slot
        self.closing = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._next: dict[int, int] = {}  # in a worker: its next slot (a worker's own copy of this object)
        self._parent_pid: Optional[int] = None  # in a worker: the process that started it, seen at its first put
        # Slots dropped without close() still let their waiting workers go (workers ignore SIGTERM: the
        # DataLoader could not stop one that waits here).
        self._closer = weakref.finalize(self, self.closing.fill_, 1)

    def __getstate__(self) -> dict:  # pickled into spawned workers: the owner's finalizer stays with the owner
        state = dict(self.__dict__)
        state.pop("_closer")
        return state

    # ---------------------------------------------------------------------------------------------- worker side
    def put(self, worker_id: int, staged: StagedInputs) -> SlotRef:
        """Writes `staged` into this worker's next slot, once the consumer has freed it. Runs in the worker."""
        if not 0 <= worker_id < self.workers:
            raise ValueError(f"worker {worker_id} has no slots: SharedSlots was made for {self.workers} workers "
                             f"(data.num_workers changed after the slots were made?)")
        flat = staged.flat.reshape(-1)
        if flat.numel() > self.slot_numel:
            raise ValueError(f"a staged micro-batch of {flat.numel()} values does not fit a slot of "
                             f"{self.slot_numel}; the slot size must bound every micro-batch (staged_numel_bound)")
        if self._parent_pid is None:
            self._parent_pid = os.getppid()  # the training process, or a forkserver (Python 3.14's default)
        turn = self._next.get(worker_id, 0)
        self._next[worker_id] = turn + 1
        slot = worker_id * self.per_worker + turn % self.per_worker
        self._wait_until_free(slot)
        self.data[slot, :flat.numel()].copy_(flat)
        ticket = int(self.tickets[slot]) + 1
        self.tickets[slot] = ticket
        self.state[slot] = FULL  # last: the consumer reads nothing of a slot before it learns of it (the pipe)
        return SlotRef(slot, ticket, flat.numel(), staged.layout, staged.unpadded)

    def writer(self, stage: Callable[[Any], tuple[Any, StagedInputs]]) -> "SlotWriter":
        """A DataLoader transform: `stage(batch)` -> (counts, StagedInputs), then the buffer into a slot."""
        return SlotWriter(stage, self)

    def _wait_until_free(self, slot: int) -> None:
        state, closing = self.state, self.closing
        while int(state[slot]) != FREE:
            if int(closing[0]) or os.getppid() != self._parent_pid:  # closed, or the parent died
                raise SlotsClosed("the training process stopped taking batches")
            time.sleep(WAIT_POLL_S)

    # ---------------------------------------------------------------------------------------------- consumer side
    def take(self, ref: SlotRef, pin: bool = False, out: Optional[torch.Tensor] = None) -> StagedInputs:
        """The staged inputs of `ref`, copied out of its slot into `out[:numel]` when given (a caller's own buffer,
        e.g. tools/bench_handover.py), else into new memory, page-locked when `pin`; frees the slot."""
        slot = ref.slot
        if int(self.state[slot]) != FULL or int(self.tickets[slot]) != ref.ticket:
            raise RuntimeError(f"shared slot {slot} no longer holds the batch sent with ticket {ref.ticket} (state "
                               f"{int(self.state[slot])}, ticket {int(self.tickets[slot])}): items taken out of "
                               f"order or twice")
        source = self.data[slot, :ref.numel]
        flat = torch.empty(ref.numel, dtype=torch.int64, pin_memory=pin) if out is None else out[:ref.numel]
        flat.copy_(source)
        self.state[slot] = FREE
        return StagedInputs(flat, ref.layout, ref.unpadded)

    def close(self) -> None:
        """Workers waiting for a slot raise SlotsClosed instead of waiting on (their DataLoader then shuts down at
        once rather than after its join timeout)."""
        self.closing[0] = 1


class SlotWriter:
    """The worker-side transform of SharedSlots.writer. In the training process itself (no DataLoader worker,
    data.num_workers 0) there is nothing to hand over: the staged item is returned as it is."""

    def __init__(self, stage: Callable[[Any], tuple[Any, StagedInputs]], slots: SharedSlots):
        self.stage, self.slots = stage, slots

    def __call__(self, batch: Any) -> tuple[Any, Any]:
        counts, staged = self.stage(batch)
        info = torch.utils.data.get_worker_info()
        if info is None:
            return counts, staged
        return counts, self.slots.put(info.id, staged)


def take_staged(item: tuple[Any, Any], slots: Optional[SharedSlots], pin: bool) -> tuple[Any, StagedInputs]:
    """(counts, SlotRef or StagedInputs) -> (counts, StagedInputs), page-locked when `pin`."""
    counts, staged = item
    if isinstance(staged, SlotRef):
        if slots is None:
            raise RuntimeError("a SlotRef arrived but no SharedSlots were given to take it from")
        return counts, slots.take(staged, pin=pin)
    return counts, staged.pin_memory() if pin else staged
