"""One optimizer step: `accum` micro-batches of forward + backward through the engine, then the update.

    step = TrainStep(engine, optimizer, device, accum, world_size)
    out = step(step_number, batches, signals)        # batches yield (counts, PackedInputs)
    guard.record(out.flags)                          # NonFiniteSteps: warn, count, stop after K in a row

No host-device synchronisation inside a step. The losses are summed on the device (read at log intervals). The
non-finite flag (any micro-batch, any rank) and the stop request (a signal on any rank) travel in one all-reduce.
With torch's fused Adam the update of a non-finite step is skipped on the device itself (DecoupledAdamW's
`nonfinite` flag), and the host reads the flags one step later, when they are long computed: `out.flags` is then
the previous step's. Without it the host reads them before the update (the step's one sync) and skips it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from megabert.model.inputs import PackedInputs
from megabert.utils.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class StepFlags:
    """What the host knows about one step: its number, its non-finite micro-batches (max over ranks), a signal."""

    step: int
    nonfinite: int = 0
    stop: int = 0


@dataclass
class StepOutput:
    loss_sum: torch.Tensor
    """Sum of the finite micro-batch losses, on the device (0-d fp32)."""
    finite_count: torch.Tensor
    """How many micro-batch losses were finite, on the device."""
    counts: list
    """Each micro-batch's host-side counts (megabert.train.metrics.batch_counts)."""
    flags: StepFlags
    """The newest step whose flags the host has read: this one, or the previous one (see the module doc)."""
    data_seconds: float
    """Time spent waiting for the next micro-batch."""


class TrainStep:
    """The step's work, and the flags of a step read one step late."""

    def __init__(self, engine, optimizer, device: torch.device, accum: int, world_size: int,
                 mlm_output: str = "loss"):
        self.engine, self.optimizer, self.device = engine, optimizer, device
        # "loss": the MLM head's decoder and cross entropy fused, no [masked, vocab] logits (3% more tokens/s in the
        # trainer on an H200, 2.5 GB less memory at base c4-128; docs/BENCHMARKS.md); "logits" computes them
        self.mlm_output = mlm_output
        self.accum, self.world_size = accum, world_size
        self._pending: Optional[tuple[int, torch.Tensor, Optional[torch.cuda.Event]]] = None

    def __call__(self, step: int, batches: Iterator[tuple[dict, PackedInputs]], signals=None) -> StepOutput:
        """Runs optimizer step `step` (1-based) on the next `accum` micro-batches of `batches`. `signals.signal`
        (a stop signal received, or 0) is read at the last micro-batch and shared with every rank."""
        engine, device, optimizer = self.engine, self.device, self.optimizer
        loss_sum = torch.zeros((), device=device, dtype=torch.float32)
        finite_count = torch.zeros((), device=device, dtype=torch.float32)
        flags = torch.zeros(2, device=device, dtype=torch.float32)  # [non-finite (any rank), stop signal]
        known, counts, data_seconds = StepFlags(step), [], 0.0
        for micro in range(self.accum):
            start = time.perf_counter()
            micro_counts, packed = next(batches)
            data_seconds += time.perf_counter() - start
            counts.append(micro_counts)
            loss = engine(**packed.to(device), mlm_output=self.mlm_output).loss
            engine.backward(loss)
            finite = torch.isfinite(loss.detach())
            loss_sum += torch.where(finite, loss.detach().float(), 0.0)
            finite_count += finite.float()
            if micro == self.accum - 1:
                flags[0] = self.accum - finite_count
                flags[1] = float(signals.signal if signals is not None else 0)
                if self.world_size > 1:
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                if optimizer.skips_on_device:
                    optimizer.nonfinite = (flags[0] > 0).float()
                    known = self.read_pending(step - 1)
                    self._pending = (step, flags.to("cpu", non_blocking=True), _record_event(device))
                else:
                    nonfinite, stop = (int(x) for x in flags.tolist())  # the step's one sync
                    optimizer.skip_next_step = nonfinite > 0
                    known = StepFlags(step, nonfinite, stop)
            engine.step()
        optimizer.skip_next_step, optimizer.nonfinite = False, None
        return StepOutput(loss_sum, finite_count, counts, known, data_seconds)

    def read_pending(self, default_step: int) -> StepFlags:
        """The flags copied to the host a step ago (their event finished long since), or none pending."""
        if self._pending is None:
            return StepFlags(default_step)
        step, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        nonfinite, stop = (int(x) for x in host.tolist())
        return StepFlags(step, nonfinite, stop)


class NonFiniteSteps:
    """Counts skipped steps; warns about each, raises after `max_in_a_row` consecutive ones."""

    def __init__(self, max_in_a_row: int, skipped: int = 0):
        self.max_in_a_row, self.skipped, self.in_a_row = max_in_a_row, skipped, 0

    def record(self, flags: StepFlags) -> None:
        if not flags.nonfinite:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.skipped += 1
        log.warning("step %d: non-finite loss on %d micro-batch(es); update skipped (%d in a row)", flags.step,
                    flags.nonfinite, self.in_a_row)
        if self.in_a_row >= self.max_in_a_row:
            raise FloatingPointError(
                f"{self.in_a_row} consecutive steps had a non-finite loss (logging.max_nonfinite_steps); lower "
                f"optim.lr, check the data, or resume from an earlier checkpoint")


def _record_event(device: torch.device) -> Optional[torch.cuda.Event]:
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()
    return event
