#!/usr/bin/env python3
"""What receiving one staged micro-batch from a DataLoader worker costs the training process: through a new
shared-memory segment per batch (PyTorch's default for a returned tensor) or through SharedSlots.

    python tools/bench_handover.py --config configs/base.json          # micro-batch 256 x 128 of the sample corpus

For each hand-over the worker stages batches exactly as the trainer's (stage_for_training, one DataLoader worker);
after it has filled its prefetch, the training side takes `--batches` of them and the tool times, per batch, the
receive plus the copy into page-locked memory (on a CPU-only machine: into one reused buffer, which stands in for
the caching pinned allocator's reused blocks). Reported: wall and thread-CPU milliseconds per micro-batch, medians
over --rounds rounds, the hand-overs alternating.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from megabert.config import apply_overrides, load_config  # noqa: E402
from megabert.data import build_mlm_data  # noqa: E402
from megabert.data.loader import LOADER_PREFETCH  # noqa: E402
from megabert.model.inputs import staged_numel_bound  # noqa: E402
from megabert.train.shared_slots import SharedSlots, SlotRef  # noqa: E402
from megabert.train.trainer import stage_for_training  # noqa: E402

HANDOVERS = ("segment per batch", "shared slots")


def _finisher(slots: SharedSlots | None, numel: int) -> Callable[[tuple[Any, Any]], torch.Tensor]:
    """The training side's work on one item: its buffer copied into page-locked memory (or a reused buffer)."""
    if torch.cuda.is_available():
        return lambda item: (slots.take(item[1], pin=True).flat if isinstance(item[1], SlotRef)
                             else item[1].pin_memory().flat)
    reused = torch.zeros(numel, dtype=torch.int64)

    def finish(item) -> torch.Tensor:
        staged = item[1]
        if isinstance(staged, SlotRef):
            return slots.take(staged, out=reused).flat
        return reused[:staged.flat.numel()].copy_(staged.flat)

    return finish


def time_handover(cfg, handover: str, batches: int, fill_seconds: float) -> dict[str, float]:
    """Milliseconds per micro-batch (wall, thread CPU) for `batches` items taken after the worker filled its
    prefetch."""
    micro, seq = cfg.micro_batch_size, cfg.data.seq_len
    data = build_mlm_data(cfg.data, seed=cfg.seed, micro_batch_size=micro)
    stage = functools.partial(stage_for_training, model_cfg=cfg.model)
    slots = SharedSlots(1, LOADER_PREFETCH + 2, staged_numel_bound(micro, seq)) if handover == "shared slots" else None
    source = data.train_batches(0, transform=stage if slots is None else slots.writer(stage))
    finish = _finisher(slots, staged_numel_bound(micro, seq))
    try:
        finish(next(source))  # the worker is up
        wall = cpu = 0.0
        taken = 0
        while taken < batches:
            time.sleep(fill_seconds)  # the worker fills its prefetch: what is timed is the receive, not the build
            for _ in range(min(LOADER_PREFETCH, batches - taken)):
                start, start_cpu = time.perf_counter(), time.thread_time()
                finish(next(source))
                wall += time.perf_counter() - start
                cpu += time.thread_time() - start_cpu
                taken += 1
        return {"wall_ms": 1e3 * wall / taken, "cpu_ms": 1e3 * cpu / taken}
    finally:
        if slots is not None:
            slots.close()
        source.close()


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "base.json"))
    parser.add_argument("--micro_batch_size", type=int, default=256, help="micro-batch to stage (base: 256)")
    parser.add_argument("--batches", type=int, default=24, help="micro-batches timed per round and hand-over")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fill-seconds", type=float, default=1.5, help="pause for the worker to fill its prefetch")
    args, overrides = parser.parse_known_args(argv)
    cfg = apply_overrides(load_config(args.config, validate=False), overrides)
    cfg.data.num_workers = 1
    cfg.micro_batch_size = args.micro_batch_size
    rounds: dict[str, list[dict[str, float]]] = {h: [] for h in HANDOVERS}
    for _ in range(args.rounds):
        for handover in HANDOVERS:
            rounds[handover].append(time_handover(cfg, handover, args.batches, args.fill_seconds))
    result = {h: {k: statistics.median(r[k] for r in runs) for k in ("wall_ms", "cpu_ms")}
              for h, runs in rounds.items()}
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (copy into a reused buffer)"
    print(f"receiving one staged micro-batch of {args.micro_batch_size} x {cfg.data.seq_len} ({where}, torch "
          f"{torch.__version__}; medians of {args.rounds} rounds of {args.batches}):")
    for handover, r in result.items():
        print(f"  {handover:20} {r['wall_ms']:7.3f} ms wall, {r['cpu_ms']:7.3f} ms CPU of the receiving thread")
    return result


if __name__ == "__main__":
    main()
