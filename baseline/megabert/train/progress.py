"""What the trainer counts between log lines and how rank 0 shows it.

Window    one logging window: host-side token/FLOP counts per micro-batch, the loss summed on the device; reduced
          over all ranks with a single all-reduce when the window closes.
RunClock  end-to-end throughput of the run after its first window (start-up and warm-up excluded), evaluation
          time taken out: what tools/bench_trainer.py compares with the bare training step.
ProgressBar  tqdm on rank 0 when stderr is a terminal, else one log line per window.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

import torch
import torch.distributed as dist

from megabert.config import TrainConfig
from megabert.train import metrics as M
from megabert.utils.logging import get_logger

log = get_logger(__name__)


class Window:
    """Accumulates one logging window: host-side counts per micro-batch, the loss sum on the device."""

    def __init__(self) -> None:
        self.steps, self.seconds = 0, 0.0
        self.loss_sum: Any = 0.0  # device tensors once a step has run
        self.loss_count: Any = 0.0
        self.counts = {"samples": 0, "real_tokens": 0, "padded_tokens": 0, "flops": 0.0}
        self.totals_real_tokens = 0.0  # after reduce, for the run summary
        self.totals_flops = 0.0

    def add_batch(self, batch: dict, cfg: TrainConfig) -> None:
        self.add_counts(M.batch_counts(batch, cfg.model.sparse_mlm_head), cfg)

    def add_counts(self, counts: dict[str, int], cfg: TrainConfig) -> None:
        """One micro-batch's counts (metrics.batch_counts), computed wherever the batch was staged."""
        self.counts["samples"] += counts["samples"]
        self.counts["real_tokens"] += counts["real_tokens"]
        self.counts["padded_tokens"] += counts["padded_tokens"]
        self.counts["flops"] += M.training_flops(cfg.model, counts)

    def reduced(self, device: torch.device, tensor_parallel_size: int) -> dict[str, float]:
        """Sums over all ranks (one all-reduce). The tensor-parallel ranks of one replica see the same batch, so
        the world sum counts each replica's work tp times."""
        as_tensor = lambda x: torch.as_tensor(x, dtype=torch.float64).to(device)
        losses = torch.stack([as_tensor(self.loss_sum), as_tensor(self.loss_count)])  # on the device already
        counts = torch.tensor([float(self.counts[k]) for k in ("samples", "real_tokens", "padded_tokens", "flops")],
                              dtype=torch.float64)  # host numbers: one copy to the device, not four
        values = torch.cat([losses, counts.to(device)])
        world = dist.get_world_size() if dist.is_initialized() else 1
        if world > 1:
            dist.all_reduce(values)
        loss_sum, loss_count, samples, real, padded, flops = values.tolist()
        tp = tensor_parallel_size
        out = {"loss_sum": loss_sum, "loss_count": loss_count, "samples": samples / tp, "real_tokens": real / tp,
               "padded_tokens": padded / tp, "flops": flops / tp}
        self.totals_real_tokens, self.totals_flops = out["real_tokens"], out["flops"]
        return out



class RunClock:
    """Wall clock and work since the first log window ended; evaluation time can be taken out."""

    def __init__(self) -> None:
        self.start: Optional[float] = None
        self.loop_end: Optional[float] = None  # the last training step's end, before the final save
        self.steps, self.real_tokens, self.flops, self.excluded = 0, 0.0, 0.0, 0.0

    def add(self, window: Window) -> None:
        if self.start is None:  # the first window holds start-up and warm-up: the clock starts after it
            self.start = time.perf_counter()
            return
        self.steps += window.steps
        self.real_tokens += window.totals_real_tokens
        self.flops += window.totals_flops

    def exclude(self, seconds: float) -> None:
        if self.start is not None:
            self.excluded += seconds

    def end_loop(self) -> None:
        """Marks the end of the training steps (the final save and export come after it)."""
        self.loop_end = time.perf_counter()

    def seconds(self) -> float:
        """Since the first window, to now."""
        return max(time.perf_counter() - self.start - self.excluded, 1e-9)

    def loop_seconds(self) -> float:
        """Since the first window, to the end of the training steps (intermediate saves included)."""
        return max((self.loop_end or time.perf_counter()) - self.start - self.excluded, 1e-9)


class ProgressBar:
    """tqdm on rank 0 when stderr is a terminal; otherwise one log line per log interval."""

    def __init__(self, total: int, initial: int, enabled: bool, show_mfu: bool = True):
        self.enabled, self.show_mfu = enabled, show_mfu
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, desc="pretrain")

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def report(self, step: int, m: dict[str, Any]) -> None:
        parts = {"loss": "n/a" if m["train/loss"] is None else f"{m['train/loss']:.4f}", "lr": f"{m['train/lr']:.2e}",
                 "tok/s": f"{m['train/tokens_per_s']:,.0f}", "mfu": f"{100 * m['train/mfu']:.1f}%",
                 "eta": hms(m["train/eta_seconds"])}
        if not self.show_mfu:  # a shared CPU's matmul peak is too noisy for a meaningful MFU
            del parts["mfu"]
        if "train/cost_usd" in m:
            parts["cost"] = f"${m['train/cost_usd']:.2f}/${m['train/projected_cost_usd']:.2f}"
        if self.bar is not None:
            self.bar.set_postfix(parts, refresh=False)
        else:
            log.info("step %d | %s", step, " | ".join(f"{k} {v}" for k, v in parts.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
