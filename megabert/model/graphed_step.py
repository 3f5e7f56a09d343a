"""A training step replayed from a CUDA graph, one graph per token-count bucket.

    step = GraphedStep(train_step, device)   # train_step(inputs) -> loss: forward, backward, optimizer step
    for batch in batches:                    # CPU batches
        packed = pack_bucketed(batch, cfg, buckets) or pack_inputs(batch, cfg)
        loss = step(packed.pin_memory())

Why: even compiled, a step is a few hundred kernel launches and the host work of the optimizer; replaying a captured
graph launches all of it at once, so the GPU never waits for Python. A graph replays fixed shapes, so batches are
padded to buckets (megabert.model.buckets): each bucket's first batch runs as it is (warm-up: Triton and Inductor
finish compiling, the optimizer makes its state), its second is captured, every later one is copied into that
graph's input buffer (one host-to-device copy) and replayed. A batch outside the buckets (plain PackedInputs) runs
as it is. All graphs share one memory pool: they never run at the same time, so the pool is as large as the largest
step, not the sum.

What `train_step` must do to be capturable: no host synchronisation (.item(), a data-dependent shape), gradients
kept between steps (optimizer.zero_grad(set_to_none=False)), an optimizer made with capturable=True (a learning
rate that changes must be a device tensor the schedule fills in), random numbers drawn on the device (dropout in
a compiled model does). It must return the loss as a tensor; GraphedStep returns a copy, valid after later steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from megabert.model.buckets import BucketedInputs
from megabert.model.inputs import PackedInputs

Capture = Callable[[Callable[[], torch.Tensor]], Callable[[], torch.Tensor]]
"""capture(fn) -> replay: records fn once; replay() runs what was recorded and returns fn's (static) output."""


class CudaGraphCapture:
    """torch.cuda.CUDAGraph capture; every graph it makes shares one memory pool. Capture errors are thread-local:
    a training loop's other threads (prefetching and pinning batches, writing checkpoints) may keep using CUDA
    meanwhile."""

    def __init__(self) -> None:
        self.pool = None

    def __call__(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            output = fn()
        if self.pool is None:
            self.pool = graph.pool()

        def replay() -> torch.Tensor:
            graph.replay()
            return output

        return replay


@dataclass
class _Bucket:
    runs: int = 0  # uncaptured runs so far
    inputs: Optional[torch.Tensor] = None  # the graph's input buffer on the device
    replay: Optional[Callable[[], torch.Tensor]] = None


class GraphedStep:
    """Runs train_step(inputs) for packed batches, from a captured graph per bucket shape (module docstring).

    warmup: uncaptured runs of a bucket before its capture. max_graphs: buckets beyond this many run uncaptured.
    capture: how to capture (CudaGraphCapture on CUDA; tests pass one that re-runs the function)."""

    def __init__(self, train_step: Callable[[dict], torch.Tensor], device: torch.device | str, warmup: int = 1,
                 max_graphs: int = 64, capture: Optional[Capture] = None):
        self.device = torch.device(device)
        if capture is None:
            if self.device.type != "cuda":
                raise ValueError(f"CUDA graphs need a CUDA device, got {self.device}; run the step directly "
                                 f"(or pass capture= to test the bookkeeping)")
            capture = CudaGraphCapture()
        self.train_step, self.capture = train_step, capture
        self.warmup, self.max_graphs = warmup, max_graphs
        self.buckets: dict[tuple, _Bucket] = {}
        self.graphs = 0
        self.replays = 0

    def __call__(self, packed: PackedInputs) -> torch.Tensor:
        if not isinstance(packed, BucketedInputs):  # outside the buckets: as it is
            return self.train_step(packed.to(self.device))
        bucket = self.buckets.setdefault(packed.shape_key, _Bucket())
        if bucket.replay is None:
            if bucket.runs < self.warmup or self.graphs >= self.max_graphs:
                bucket.runs += 1
                return self.train_step(packed.to(self.device))
            bucket.inputs = torch.empty(packed.flat.shape, dtype=packed.flat.dtype, device=self.device)
            bucket.inputs.copy_(packed.flat, non_blocking=True)
            static = replace(packed, flat=bucket.inputs)  # views of the buffer (and casts) happen inside the graph
            bucket.replay = self.capture(lambda: self.train_step(static.to(self.device)))
            self.graphs += 1
        else:
            bucket.inputs.copy_(packed.flat, non_blocking=True)
        self.replays += 1
        return bucket.replay().clone()  # the graph's output is rewritten by the next replay
