"""What the trainer counts and reports: log windows, the run clock, the progress bar, the metrics of a window.

Window     one logging window: host-side token/FLOP counts per micro-batch, the loss summed on the device; reduced
           over all ranks with a single all-reduce when the window closes (the window's one device sync).
RunClock   end-to-end throughput of the run after its first window (start-up and warm-up excluded); the time of
           evaluations and callbacks is taken out.
ProgressBar  tqdm on rank 0 when stderr is a terminal (log lines are printed above it), else one line per window.
Telemetry  the component the loop talks to: step_done() after every step closes a window every
           logging.log_interval steps (and at the last step), assembles its metrics, writes and shows them.
"""

from __future__ import annotations

import contextlib
import logging
import resource
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
        self.steps, self.seconds, self.data_seconds = 0, 0.0, 0.0
        self.loss_sum: Any = 0.0  # device tensors once a step has run
        self.loss_count: Any = 0.0
        self.counts = {"samples": 0, "real_tokens": 0, "padded_tokens": 0, "flops": 0.0}
        self.totals_real_tokens = 0.0  # after reduce, for the run summary
        self.totals_flops = 0.0

    def add_counts(self, counts: dict[str, int], cfg: TrainConfig) -> None:
        """One micro-batch's counts (metrics.batch_counts), computed where the batch was prepared."""
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
    """tqdm on rank 0 when stderr is a terminal; otherwise one log line per log interval.

    With a bar, megabert's log lines are printed above it (never into its line), and the bar shows one
    remaining-time estimate: the trainer's (from the last window's pace), not tqdm's own."""

    def __init__(self, total: int, initial: int, enabled: bool, show_mfu: bool = True):
        self.enabled, self.show_mfu = enabled, show_mfu
        self.bar = None
        self._redirect = contextlib.ExitStack()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, desc="pretrain",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
            self._redirect.enter_context(logging_redirect_tqdm([logging.getLogger("megabert")]))

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
            self.bar = None
        self._redirect.close()


def hardware(device: torch.device, world_size: int) -> str:
    """What a run trained on, e.g. "8 x NVIDIA H100 80GB HBM3" or "1 x cpu": its wall-clock figures (a budget's
    steps, tokens/s) compare only with runs on the same."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{world_size} x {name}"


def hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Telemetry:
    """Windows, clock, progress and the metrics of each window, for one run (every rank; rank 0 writes)."""

    def __init__(self, cfg: TrainConfig, writer: M.MetricsWriter, device: torch.device, world_size: int,
                 peak_flops: float, initial_step: int, is_main: bool):
        self.cfg, self.writer, self.device = cfg, writer, device
        self.world_size, self.peak_flops, self.is_main = world_size, peak_flops, is_main
        self.window, self.clock = Window(), RunClock()
        self.progress = ProgressBar(cfg.schedule.total_steps, initial_step, enabled=is_main,
                                    show_mfu=device.type == "cuda")

    def step_done(self, step: int, out, seconds: float, state, engine) -> Optional[dict[str, Any]]:
        """Counts a finished step (a train.step.StepOutput); returns the window's metrics when it closed."""
        w = self.window
        for counts in out.counts:
            w.add_counts(counts, self.cfg)
        w.loss_sum = w.loss_sum + out.loss_sum
        w.loss_count = w.loss_count + out.finite_count
        w.steps += 1
        w.seconds += seconds
        w.data_seconds += out.data_seconds
        self.progress.update()
        total = self.cfg.schedule.total_steps
        if step % self.cfg.logging.log_interval and step != total:
            return None
        metrics = self._window_metrics(state, engine)
        self.clock.add(w)
        self.window = Window()
        if step == total:
            self.clock.end_loop()  # the final save (in the loop or after it) is not part of `loop_*`
        return metrics

    def set_total(self, total: int) -> None:
        """The run's step count changed (a wall-clock budget fixed it): the progress bar's end follows."""
        if self.progress.bar is not None:
            self.progress.bar.total = total
            self.progress.bar.refresh()

    def exclude(self, seconds: float) -> None:
        """Takes time the loop spent on something else (evaluation, callbacks) out of the run clock."""
        self.clock.exclude(seconds)

    def _window_metrics(self, state, engine) -> dict[str, Any]:
        cfg, w = self.cfg, self.window
        totals = w.reduced(self.device, cfg.parallel.tensor_parallel_size)
        seconds = max(w.seconds, 1e-9)
        metrics = {
            "train/loss": totals["loss_sum"] / totals["loss_count"] if totals["loss_count"] else None,
            "train/lr": engine.lr_scheduler.get_last_lr()[0],
            "train/grad_norm": _as_float(engine.get_global_grad_norm()),
            "train/samples_per_s": totals["samples"] / seconds,
            "train/tokens_per_s": totals["real_tokens"] / seconds,
            "train/padded_tokens_per_s": totals["padded_tokens"] / seconds,
            "train/mfu": totals["flops"] / seconds / (self.peak_flops * self.world_size),
            "train/data_seconds": w.data_seconds,
            "train/window_seconds": w.seconds,
            "train/consumed_samples": state.consumed_samples,
            "train/skipped_steps": state.skipped_steps,
        }
        if self.device.type == "cuda":  # host-side counters: no device synchronisation
            memory = torch.cuda.memory_stats(self.device)
            metrics["cuda/max_allocated_gib"] = memory.get("allocated_bytes.all.peak", 0) / 2 ** 30
            metrics["cuda/reserved_gib"] = memory.get("reserved_bytes.all.current", 0) / 2 ** 30
            if cfg.logging.host_diagnostics:
                metrics["cuda/device_mallocs"] = memory.get("num_device_alloc", 0)  # cumulative cudaMalloc calls
                metrics["cuda/alloc_retries"] = memory.get("num_alloc_retries", 0)  # cache flushes to fit (slow)
        if cfg.logging.host_diagnostics:
            usage = resource.getrusage(resource.RUSAGE_SELF)  # cumulative, this process (all its threads)
            metrics["host/cpu_seconds"] = usage.ru_utime + usage.ru_stime
            metrics["host/minor_page_faults"] = usage.ru_minflt  # first touches of memory: costly in a VM
            metrics["host/max_rss_gib"] = usage.ru_maxrss / 2 ** 20  # Linux reports KiB
        remaining = (cfg.schedule.total_steps - state.step) * w.seconds / max(w.steps, 1)
        metrics["train/eta_seconds"] = remaining
        if cfg.logging.gpu_hour_price > 0:
            hours = self.world_size / 3600.0
            metrics["train/cost_usd"] = cfg.logging.gpu_hour_price * hours * state.elapsed_seconds
            metrics["train/projected_cost_usd"] = cfg.logging.gpu_hour_price * hours * (state.elapsed_seconds +
                                                                                         remaining)
        if self.is_main:
            self.writer.write(state.step, metrics)
            self.progress.report(state.step, metrics)
        return metrics

    def run_summary(self) -> dict[str, float]:
        """Throughput over wall-clock time from the end of the first log window: `run_*` to the end of the final
        save (data loading, logging and every checkpoint included), `loop_*` to the end of the last step
        (intermediate checkpoints included, the final one not). Evaluation and callbacks are excluded."""
        clock = self.clock
        if not clock.steps:
            return {}
        seconds, loop_seconds = clock.seconds(), clock.loop_seconds()
        peak = self.peak_flops * self.world_size
        summary = {"run_tokens_per_s": clock.real_tokens / seconds, "run_mfu": clock.flops / seconds / peak,
                   "run_steps_measured": clock.steps, "run_seconds_measured": seconds,
                   "loop_tokens_per_s": clock.real_tokens / loop_seconds, "loop_mfu": clock.flops / loop_seconds / peak,
                   "loop_seconds_measured": loop_seconds}
        if self.is_main:
            log.info("run after the first log window: %s real tok/s%s over %d steps (to the last step), %s to the "
                     "end of the final save", f"{summary['loop_tokens_per_s']:,.0f}",
                     f", MFU {100 * summary['loop_mfu']:.1f}%" if self.device.type == "cuda" else "",
                     summary["run_steps_measured"], f"{summary['run_tokens_per_s']:,.0f}")
        return summary

    def close(self) -> None:
        self.progress.close()


def _as_float(value) -> Optional[float]:
    if value is None:
        return None
    return float(value.item() if torch.is_tensor(value) else value)
