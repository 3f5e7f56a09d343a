"""The pretraining loop: MosaicBERT through a DeepSpeed engine, from one CPU process to many GPU nodes.

    Trainer(cfg).train()

What happens, in order:
 1. preflight (no process group yet): config, world size, batch divisibility, DeepSpeed JSON, data files.
 2. process group (any launcher, utils/distributed.py), model, optional tensor-parallel step, data, optimizer,
    schedule, DeepSpeed engine; resume from a checkpoint; the resolved config written to output_dir.
 3. steps: `accum` micro-batches of forward + backward, then one optimizer step (clipping in DeepSpeed).
    A step whose loss is not finite on any rank is skipped (no update); K in a row stop the run.
 4. every log_interval: loss, lr, grad norm, tokens/s, MFU, ETA (and cost); every eval_interval: validation
    MLM loss and accuracy; every save_interval and at the end: an atomic checkpoint; SIGTERM / SIGUSR1: save
    and exit cleanly. At the end the model is exported to output_dir/model.

No host-device synchronisation in a step: the non-finite flag and the stop request are all-reduced on the device;
fused Adam skips a non-finite update on the device by itself, and the host reads the flags one step later (when
they are long computed) to warn, count and stop. Losses are summed on the device and read at log intervals.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import random
import resource
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist

from megabert.config import ConfigError, TrainConfig, to_dict
from megabert.data.loader import LOADER_PREFETCH
from megabert.model.inputs import StagedInputs, prepare_inputs, stage_inputs, staged_numel_bound
from megabert.parallel.deepspeed_config import build_deepspeed_config
from megabert.train import metrics as M
from megabert.train.budget import BUDGET_KEY, budget_for_run, max_over_ranks, refresh_lr
from megabert.train.checkpoint import CheckpointManager, resolve_resume, step_dir_name
from megabert.train.prefetch import StagedBatches
from megabert.train.progress import ProgressBar, RunClock, Window
from megabert.train.shared_slots import SharedSlots, take_staged
from megabert.utils.distributed import DistEnv, barrier, discover_env, init_distributed
from megabert.utils.gc_clock import GcClock
from megabert.utils.logging import get_logger, setup_logging
from megabert.utils.timers import Timers

log = get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

LOOP_SWITCH_INTERVAL_S = 0.0005
"""Python's thread switch interval while the loop runs (the interpreter's default: 5 ms). The loop's host work is
on the critical path after every device synchronisation (DeepSpeed's ZeRO syncs at the end of each backward),
and the staging thread and the checkpoint writer share the GIL with it: a thread holding the GIL can keep the
loop waiting for up to this interval. On an H200 the effect was within the machine's noise (docs/BENCHMARKS.md,
runs 12-14); it is kept because it bounds that wait and costs nothing measurable."""

# data_builder(cfg, dp_rank, dp_size, train_samples) -> object with train_batches(consumed_samples, transform),
# valid_batches() and tokenizer.vocab_size (the megabert.data contract; `transform` is applied to each training
# batch where it is built, e.g. in a DataLoader worker, and its result yielded instead).
DataBuilder = Callable[[TrainConfig, int, int, int], Any]


def default_data_builder(cfg: TrainConfig, dp_rank: int, dp_size: int, train_samples: int):
    from megabert.data import build_mlm_data

    return build_mlm_data(cfg.data, seed=cfg.seed, micro_batch_size=cfg.micro_batch_size, dp_rank=dp_rank,
                          dp_size=dp_size, train_samples=train_samples)


def preflight(cfg: TrainConfig, env: DistEnv, check_data: bool = True) -> dict:
    """Every check that needs no process group; returns the DeepSpeed JSON. Raises ConfigError."""
    cfg.validate()
    cfg.validate_world(env.world_size)
    tp = cfg.parallel.tensor_parallel_size
    if tp > 1:
        tensor_parallel_api()
    on_gpu = cfg.parallel.device != "cpu" and torch.cuda.is_available()
    ds_config = build_deepspeed_config(cfg.parallel, cfg.optim, cfg.global_batch_size, cfg.micro_batch_size,
                                       env.world_size // tp, cfg.deepspeed_extra, on_gpu=on_gpu)
    if check_data:
        check_data_files(cfg)
    if cfg.checkpoint.resume not in ("auto", "none", "") and not Path(cfg.checkpoint.resume).exists():
        raise ConfigError(f"checkpoint.resume {cfg.checkpoint.resume!r} does not exist; use 'auto', 'none' or a "
                          f"checkpoint directory")
    return ds_config


def check_data_files(cfg: TrainConfig) -> None:
    """data.data_path prefixes (weights skipped) must have .bin and .idx; tokenizer files must exist."""
    prefixes = [p for p in cfg.data.data_path if not _is_number(p)]
    if not prefixes:
        raise ConfigError("data.data_path is empty; preprocess a corpus with tools/preprocess_data.py and set "
                          "data.data_path to its output prefix")
    for prefix in prefixes:
        missing = [ext for ext in (".bin", ".idx") if not Path(prefix + ext).is_file()]
        if missing:
            raise ConfigError(f"data.data_path: {prefix}{' and '.join(missing)} not found; preprocess the corpus "
                              f"first (tools/preprocess_data.py --output-prefix {prefix} ...)")
    for name in ("vocab_file", "tokenizer_model"):
        path = getattr(cfg.data, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"data.{name} {path!r} not found")


def tensor_parallel_api():
    """(ParallelGroups, parallelize_model) from megabert.parallel, or a ConfigError when they are not built."""
    try:
        from megabert.parallel.groups import ParallelGroups
        from megabert.parallel.parallelize import parallelize_model
    except ImportError as e:
        raise ConfigError(f"tensor parallelism not available in this installation ({e}); set "
                          f"parallel.tensor_parallel_size 1") from None
    return ParallelGroups, parallelize_model


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


@dataclass
class TrainState:
    """What a checkpoint needs beyond the engine: where the run is, in steps, samples and time."""

    step: int = 0
    consumed_samples: int = 0
    elapsed_seconds: float = 0.0
    skipped_steps: int = 0


class Trainer:
    def __init__(self, cfg: TrainConfig, data_builder: Optional[DataBuilder] = None):
        self.cfg = cfg
        self.env = discover_env()
        setup_logging(self.env.rank)
        self.ds_config = preflight(cfg, self.env, check_data=data_builder is None)
        self.data_builder = data_builder or default_data_builder
        self.timers = Timers()
        self.gc_clock = GcClock()
        self.engine = None
        self.budget = None  # [budget] set by setup() when the run has a wall-clock budget
        self._stop_signal: Optional[int] = None

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Process group, model, data, engine, resume. Called by train(); separate so tools can reuse it."""
        cfg, env = self.cfg, self.env
        if cfg.parallel.device == "cpu" or not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
        self.device = init_distributed(env, cfg.parallel.backend, cfg.parallel.device)
        self.rank, self.world_size = env.rank, env.world_size
        self.is_main = env.rank == 0
        _seed_everything(cfg.seed)  # identical initial weights on every rank

        from megabert.model.bert import MosaicBertForMaskedLM

        model = MosaicBertForMaskedLM(cfg.model)
        self.mpu, self.dp_rank, self.dp_size = None, env.rank, env.world_size
        if cfg.parallel.tensor_parallel_size > 1:
            ParallelGroups, parallelize_model = tensor_parallel_api()
            self.mpu = ParallelGroups(tensor_parallel_size=cfg.parallel.tensor_parallel_size, model_cfg=cfg.model)
            model = parallelize_model(model, self.mpu)
            self.dp_rank, self.dp_size = self.mpu.get_data_parallel_rank(), self.mpu.get_data_parallel_world_size()
        # Dropout differs across data-parallel replicas; the ranks of one tensor-parallel group share a stream.
        _seed_everything(cfg.seed + 1 + self.dp_rank)

        self.accum = cfg.grad_accumulation_steps(self.dp_size)
        self.data = self._build_data()
        vocab = self.data.tokenizer.vocab_size
        if vocab > cfg.model.vocab_size:
            raise ConfigError(f"the tokenizer has {vocab} tokens but model.vocab_size is {cfg.model.vocab_size}; "
                              f"set model.vocab_size to {-(-vocab // 64) * 64} (a multiple of 64)")

        from megabert.parallel.deepspeed_config import initialize
        from megabert.train.optimizer import build_optimizer, build_scheduler

        model.to(self.device)
        self.optimizer = build_optimizer(model, cfg.optim)
        self._pending_flags = None  # (step, device->host copy of [non-finite, stop], event) read one step late
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule)
        self.engine = initialize(model, self.optimizer, self.scheduler, self.ds_config, mpu=self.mpu)
        if cfg.parallel.compile:
            self.engine.compile()

        self.checkpoints = CheckpointManager(cfg.checkpoint, self.rank, self.world_size)
        self.state = TrainState()
        resume = resolve_resume(cfg.checkpoint)
        if resume is not None:
            saved = self.checkpoints.load(self.engine, resume)
            self.state = TrainState(saved["step"], saved["consumed_samples"], saved.get("elapsed_seconds", 0.0),
                                    saved.get("skipped_steps", 0))
            log.info("resumed from %s at step %d (%d samples consumed)", resume, self.state.step,
                     self.state.consumed_samples)
        elif cfg.checkpoint.init_from:
            self._init_weights_from(cfg.checkpoint.init_from)
        # [budget] wall-clock budget (train/budget.py): a count recorded in the checkpoint is kept, else measured
        self.budget = budget_for_run(cfg.schedule, saved.get(BUDGET_KEY) if resume is not None else None,
                                     agree=max_over_ranks(self.device))
        if self.budget is not None and self.budget.budget_changed() and self.is_main:
            log.warning("schedule.budget_minutes changed since the checkpoint: the run keeps the step count fixed "
                        "for the recorded budget (%d steps)", self.budget.total_steps)

        out = Path(cfg.output_dir)
        if self.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
            (out / "deepspeed_config.json").write_text(json.dumps(self.ds_config, indent=2) + "\n")
        self.writer = M.MetricsWriter(out, cfg.logging.tensorboard, cfg.logging.wandb_project, to_dict(cfg),
                                      enabled=self.is_main)
        self.peak_flops = M.measure_peak_flops(self.device)
        log.info("launcher %s: world %d (data parallel %d x tensor parallel %d), micro batch %d x %d "
                 "accumulation = global %d; device %s, ZeRO %d, %s; peak matmul %.4g TFLOP/s per device",
                 env.launcher, self.world_size, self.dp_size, cfg.parallel.tensor_parallel_size,
                 cfg.micro_batch_size, self.accum, cfg.global_batch_size, self.device, cfg.parallel.zero_stage,
                 cfg.parallel.precision, self.peak_flops / 1e12)
        _freeze_setup_objects()

    def _build_data(self):
        """Rank 0 builds (and caches) the sample indices first; the others then read the cache."""
        train_samples = self.cfg.schedule.total_steps * self.cfg.global_batch_size
        build = lambda: self.data_builder(self.cfg, self.dp_rank, self.dp_size, train_samples)
        if self.rank != 0:
            barrier()
        data = build()
        if self.rank == 0:
            barrier()
        return data

    def _init_weights_from(self, source: str) -> None:
        from megabert.model.pretrained import load_state_dict

        state = load_state_dict(source)
        missing, unexpected = self.engine.module.load_state_dict(state, strict=False)
        log.info("initialised weights from %s (missing %s, unexpected %s)", source, missing, unexpected)

    # ------------------------------------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        """Runs to schedule.total_steps (or until a stop signal); returns a summary of the run."""
        if self.engine is None:
            self.setup()
        cfg, st = self.cfg, self.state
        total = cfg.schedule.total_steps
        previous_handlers = {s: signal.signal(s, self._on_stop_signal) for s in STOP_SIGNALS}
        batches = self._staged_train_batches()
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(LOOP_SWITCH_INTERVAL_S)
        progress = ProgressBar(total, st.step, enabled=self.is_main, show_mfu=self.device.type == "cuda")
        window = Window()
        clock = RunClock()  # end-to-end throughput after the first log window (start-up and warm-up excluded)
        nonfinite_in_a_row, last_saved, summary, staging_ready = 0, -1, {}, False
        self.engine.train()
        self.gc_clock.install()
        if self.budget is not None:  # [budget] its clock starts with the loop; the count to run to for now
            total = self.budget.start(st.step, time.perf_counter())
            _set_progress_total(progress, total)
        try:
            while st.step < total:
                step_start = time.perf_counter()
                flag_step, nonfinite, stop = self._train_step(batches, window)
                if not staging_ready:  # after the first step, when the optimizer state exists
                    staging_ready = True
                    seconds = self.checkpoints.prepare(self.engine)
                    if seconds and self.is_main:
                        log.info("pinned host buffers for asynchronous checkpoints in %.1f s", seconds)
                st.step += 1
                st.consumed_samples += cfg.global_batch_size
                nonfinite_in_a_row = self._check_nonfinite(flag_step, nonfinite, nonfinite_in_a_row)
                step_time = time.perf_counter() - step_start
                st.elapsed_seconds += step_time
                window.seconds += step_time
                if self.budget is not None:  # [budget] the step count, fixed once the rate is measured
                    total = self._record_budget(total, progress)
                progress.update()

                if st.step % cfg.logging.log_interval == 0 or st.step == total:
                    summary = self._log(window, progress)
                    clock.add(window)
                    window = Window()
                    if st.step < total:
                        clock.exclude(self._between_windows())
                if st.step == total:
                    clock.end_loop()  # the final save (in the loop or after it) is not part of `loop_*`
                if cfg.logging.eval_interval and st.step % cfg.logging.eval_interval == 0 and st.step < total:
                    clock.exclude(self._evaluate()["eval_seconds"])
                if stop:
                    log.warning("signal %s received: saving a checkpoint at step %d and exiting",
                                signal.Signals(stop).name if stop in signal.Signals._value2member_map_ else stop,
                                st.step)
                    self._save()
                    self.checkpoints.wait()  # published before the process exits
                    summary.update(stopped_by_signal=True, step=st.step)
                    return summary
                if cfg.checkpoint.save_interval and st.step % cfg.checkpoint.save_interval == 0:
                    last_saved = self._save()
            flag_step, nonfinite, _ = self._read_pending_flags()  # the last step's, when read one step late
            self._check_nonfinite(flag_step, nonfinite, nonfinite_in_a_row)
            if last_saved != st.step:
                self._save()
            self.checkpoints.wait()  # the final checkpoint is published (export reads it)
            summary.update(self._run_summary(clock))
            if self.budget is not None:  # [budget] the estimate against the actual end
                summary.update(self.budget.summary(st.step))
                if self.is_main:
                    log.info(self.budget.report(st.step))
            if self.is_main and "run_tokens_per_s" in summary:
                log.info("run after the first log window: %s real tok/s%s over %d steps (to the last step), %s to the "
                         "end of the final save", f"{summary['loop_tokens_per_s']:,.0f}",
                         f", MFU {100 * summary['loop_mfu']:.1f}%" if self.device.type == "cuda" else "",
                         summary["run_steps_measured"], f"{summary['run_tokens_per_s']:,.0f}")
            summary.update(self._evaluate() if cfg.logging.eval_interval else {})
            summary.update(step=st.step, stopped_by_signal=False)
            self._export()
            if self.is_main:
                self.writer.write(st.step, {f"final/{k}": v for k, v in summary.items()})
            return summary
        finally:
            self.gc_clock.remove()
            sys.setswitchinterval(switch_interval)
            batches.close()
            self.checkpoints.close()  # the last pruning; after an exception also a save still in flight
            progress.close()
            self.writer.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)

    def _staged_train_batches(self, stage_in_workers: bool = True) -> StagedBatches:
        """The training batches from the data position as (counts, StagedInputs). Counting and staging happen
        where the batch is built (a DataLoader worker process with data.num_workers > 0), which hands the staged
        buffer over through shared-memory slots made once (train/shared_slots.py); this process only copies it
        out (page-locked on a GPU), on a thread up to data.stage_ahead micro-batches ahead. stage_in_workers=False
        stages on that thread instead (for comparison: tools/bench_trainer.py)."""
        stage = functools.partial(stage_for_training, model_cfg=self.cfg.model)
        consumed = self.state.consumed_samples
        if not stage_in_workers:
            pin = staged_finisher(self.device)
            return StagedBatches(self.data.train_batches(consumed_samples=consumed), lambda batch: pin(stage(batch)),
                                 depth=self.cfg.data.stage_ahead, device=self.device)
        slots = self._shared_slots()
        source = self.data.train_batches(consumed_samples=consumed,
                                         transform=stage if slots is None else slots.writer(stage))
        return StagedBatches(source, staged_finisher(self.device, slots), depth=self.cfg.data.stage_ahead,
                             device=self.device, on_close=None if slots is None else slots.close)

    def _shared_slots(self) -> Optional[SharedSlots]:
        """Slots for the DataLoader workers to hand staged micro-batches over in (none without workers): enough
        for each worker to run its prefetch ahead plus the item in the staging thread's hands."""
        workers = self.cfg.data.num_workers
        if workers == 0:
            return None
        return SharedSlots(workers, LOADER_PREFETCH + 2, staged_numel_bound(self.cfg.micro_batch_size,
                                                                            self.cfg.data.seq_len))

    def _train_step(self, batches: Iterator[tuple[dict, StagedInputs]], window: Window) -> tuple[int, int, int]:
        """One optimizer step over `accum` micro-batches. Returns (step, non-finite flag, stop signal) for the
        latest step whose flags the host knows: this one when the optimizer skips on the host, else the previous
        one -- the device then skips a non-finite update by itself and the host reads the flags a step late, so
        it never waits for the device (no bubble before the optimizer step)."""
        engine, device, optimizer = self.engine, self.device, self.optimizer
        step = self.state.step + 1
        loss_sum = torch.zeros((), device=device, dtype=torch.float32)
        finite_count = torch.zeros((), device=device, dtype=torch.float32)
        flags = torch.zeros(2, device=device, dtype=torch.float32)  # [non-finite (any rank), stop signal]
        known = (step, 0, 0)
        for micro in range(self.accum):
            with self.timers("data"):
                counts, staged = next(batches)
            window.add_counts(counts, self.cfg)
            loss = engine(**staged.to(device)).loss
            engine.backward(loss)
            finite = torch.isfinite(loss.detach())
            loss_sum += torch.where(finite, loss.detach().float(), 0.0)
            finite_count += finite.float()
            if micro == self.accum - 1:
                flags[0] = self.accum - finite_count
                flags[1] = float(self._stop_signal or 0)
                if self.world_size > 1:
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                if optimizer.skips_on_device:
                    optimizer.nonfinite = (flags[0] > 0).float()
                    known = self._read_pending_flags()
                    self._pending_flags = (step, flags.to("cpu", non_blocking=True), _record_event(device))
                else:
                    nonfinite, stop = (int(x) for x in flags.tolist())  # the step's one sync
                    optimizer.skip_next_step = nonfinite > 0
                    known = (step, nonfinite, stop)
            engine.step()
        optimizer.skip_next_step, optimizer.nonfinite = False, None
        window.loss_sum = window.loss_sum + loss_sum
        window.loss_count = window.loss_count + finite_count
        window.steps += 1
        return known

    def _record_budget(self, total: int, progress: ProgressBar) -> int:
        """[budget] Tells the budget the step ended; once it fixes the count, the schedule (which reads
        cfg.schedule.total_steps) already holds it and the next step's lr is recomputed from it."""
        fixed = self.budget.record(self.state.step, time.perf_counter())
        if fixed is None:
            return total
        refresh_lr(self.scheduler)
        _set_progress_total(progress, fixed)
        if self.is_main:
            log.info("%s", self.budget.fix_message())
        return fixed

    def _between_windows(self) -> float:
        """Runs after each log window but the last, before any evaluation or save; returns the seconds it took,
        which the run's clock leaves out. Training does nothing here: tools/bench_trainer.py --interleave times
        bare training steps at this point, so that trainer and bare step alternate every window and a machine
        drifting over the call affects both alike."""
        return 0.0

    def _read_pending_flags(self) -> tuple[int, int, int]:
        """(step, non-finite, stop) copied to the host a step ago; its event finished long since."""
        if self._pending_flags is None:
            return self.state.step, 0, 0
        step, host, event = self._pending_flags
        self._pending_flags = None
        if event is not None:
            event.synchronize()
        nonfinite, stop = (int(x) for x in host.tolist())
        return step, nonfinite, stop

    def _check_nonfinite(self, step: int, nonfinite: int, in_a_row: int) -> int:
        """Warns about a skipped step; raises after logging.max_nonfinite_steps in a row. Returns the streak."""
        if not nonfinite:
            return 0
        in_a_row += 1
        self.state.skipped_steps += 1
        log.warning("step %d: non-finite loss on %d micro-batch(es); update skipped (%d in a row)", step, nonfinite,
                    in_a_row)
        if in_a_row >= self.cfg.logging.max_nonfinite_steps:
            raise FloatingPointError(
                f"{in_a_row} consecutive steps had a non-finite loss (logging.max_nonfinite_steps); lower optim.lr, "
                f"check the data, or resume from an earlier checkpoint")
        return in_a_row

    def _on_stop_signal(self, signum: int, frame) -> None:
        self._stop_signal = signum

    # ------------------------------------------------------------------------------------------------ reports
    def _log(self, window: Window, progress: ProgressBar) -> dict[str, Any]:
        cfg, st = self.cfg, self.state
        totals = window.reduced(self.device, cfg.parallel.tensor_parallel_size)
        tokens_per_s = totals["real_tokens"] / max(window.seconds, 1e-9)
        metrics = {
            "train/loss": totals["loss_sum"] / totals["loss_count"] if totals["loss_count"] else None,
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": _as_float(self.engine.get_global_grad_norm()),
            "train/samples_per_s": totals["samples"] / max(window.seconds, 1e-9),
            "train/tokens_per_s": tokens_per_s,
            "train/padded_tokens_per_s": totals["padded_tokens"] / max(window.seconds, 1e-9),
            "train/mfu": totals["flops"] / max(window.seconds, 1e-9) / (self.peak_flops * self.world_size),
            "train/data_seconds": self.timers.pop().get("data", 0.0),
            "train/window_seconds": window.seconds,
            "train/consumed_samples": st.consumed_samples,
            "train/skipped_steps": st.skipped_steps,
        }
        if self.device.type == "cuda":  # host-side counters: no device synchronisation
            memory = torch.cuda.memory_stats(self.device)
            metrics["cuda/max_allocated_gib"] = memory.get("allocated_bytes.all.peak", 0) / 2 ** 30
            metrics["cuda/reserved_gib"] = memory.get("reserved_bytes.all.current", 0) / 2 ** 30
            metrics["cuda/device_mallocs"] = memory.get("num_device_alloc", 0)  # cumulative cudaMalloc calls
            metrics["cuda/alloc_retries"] = memory.get("num_alloc_retries", 0)  # cache flushes to fit (slow)
        usage = resource.getrusage(resource.RUSAGE_SELF)  # cumulative, this process (all its threads)
        metrics["host/cpu_seconds"] = usage.ru_utime + usage.ru_stime
        metrics["host/minor_page_faults"] = usage.ru_minflt  # first touches of memory: costly in a VM
        metrics["host/max_rss_gib"] = usage.ru_maxrss / 2 ** 20  # Linux reports KiB
        metrics["host/gc_seconds"] = self.gc_clock.seconds  # cumulative, this run's loop: the collector's pauses
        metrics["host/gc_full_collections"] = self.gc_clock.collections[2]
        remaining = (cfg.schedule.total_steps - st.step) * window.seconds / max(window.steps, 1)
        metrics["train/eta_seconds"] = remaining
        if cfg.logging.gpu_hour_price > 0:
            hours = self.world_size / 3600.0
            metrics["train/cost_usd"] = cfg.logging.gpu_hour_price * hours * st.elapsed_seconds
            metrics["train/projected_cost_usd"] = cfg.logging.gpu_hour_price * hours * (st.elapsed_seconds + remaining)
        if self.is_main:
            self.writer.write(st.step, metrics)
            progress.report(st.step, metrics)
        return {k.split("/", 1)[1]: v for k, v in metrics.items()}

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        """Validation MLM loss (token-weighted) and accuracy over eval_iters micro-batches per rank."""
        self.engine.eval()
        start = time.perf_counter()
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # [loss x masked, correct, masked]
        batches = self.data.valid_batches()
        for i in range(self.cfg.logging.eval_iters):
            batch = next(batches, None)
            if batch is None:  # a short validation split: start over, so every rank runs the same count
                batches = self.data.valid_batches()
                batch = next(batches, None)
                if batch is None:
                    raise RuntimeError("the validation split is empty; give data.split a non-zero valid weight")
            out = self.engine(**prepare_inputs(batch, self.cfg.model, self.device))
            labels = out.labels
            selected = labels != -100
            n = selected.sum()
            sums[0] += out.loss.double() * n
            sums[1] += (self._predictions(out.logits)[selected] == labels[selected]).sum()
            sums[2] += n
        if self.world_size > 1:
            dist.all_reduce(sums)
        loss_sum, correct, count = sums.tolist()
        result = {"eval/loss": loss_sum / max(count, 1),
                  "eval/accuracy": correct / max(count, 1) if correct == correct else None,
                  "eval/masked_tokens": count, "eval/seconds": time.perf_counter() - start}
        result["eval/perplexity"] = math.exp(min(result["eval/loss"], 50.0))
        self.engine.train()
        if self.is_main:
            self.writer.write(self.state.step, result)
            accuracy = result["eval/accuracy"]
            log.info("step %d eval: loss %.4f, accuracy %s (%d masked tokens)", self.state.step, result["eval/loss"],
                     "n/a" if accuracy is None else f"{accuracy:.4f}", count)
        return {k.replace("/", "_"): v for k, v in result.items()}

    def _predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Argmax over the vocabulary; under tensor parallelism each rank holds a vocabulary slice."""
        if self.cfg.parallel.tensor_parallel_size > 1:
            from megabert.parallel.cross_entropy import vocab_parallel_argmax

            return vocab_parallel_argmax(logits, self.mpu.tp_group)
        return logits.argmax(-1)

    def _save(self) -> int:
        start = time.perf_counter()
        st = self.state
        path = self.checkpoints.save(self.engine, st.step,
                                     {"step": st.step, "consumed_samples": st.consumed_samples,
                                      "elapsed_seconds": st.elapsed_seconds, "skipped_steps": st.skipped_steps,
                                      "zero_stage": self.cfg.parallel.zero_stage,
                                      **({BUDGET_KEY: self.budget.state_dict()} if self.budget else {})},  # [budget]
                                     to_dict(self.cfg))
        # What training waited for; saving asynchronously, the snapshot (and the previous write, if unfinished).
        seconds = time.perf_counter() - start
        if self.is_main:
            self.writer.write(st.step, {"checkpoint/seconds": seconds})
            if self.checkpoints.in_flight:
                log.info("saved checkpoint %s in %.2f s (snapshot); writing it in the background", path, seconds)
            else:
                log.info("saved checkpoint %s in %.1f s", path, seconds)
        return st.step

    def _export(self) -> None:
        if self.cfg.parallel.tensor_parallel_size > 1:
            ckpt = Path(self.cfg.checkpoint.dir) / step_dir_name(self.state.step)
            log.info("tensor-parallel run: export with python tools/convert_checkpoint.py merge-tp %s %s/model",
                     ckpt, self.cfg.output_dir)
            return
        if self.is_main:
            from megabert.train.export import export_checkpoint

            out = export_checkpoint(self.cfg.checkpoint.dir, Path(self.cfg.output_dir) / "model")
            log.info("exported the final model to %s", out)
        barrier()

    def _run_summary(self, clock: RunClock) -> dict[str, float]:
        """Throughput over wall-clock time from the end of the first log window: `run_*` to the end of the final
        save (data loading, logging and every checkpoint included), `loop_*` to the end of the last step
        (intermediate checkpoints included, the final one not). Evaluation is excluded from both."""
        if not clock.steps:
            return {}
        seconds, loop_seconds = clock.seconds(), clock.loop_seconds()
        return {"run_tokens_per_s": clock.real_tokens / seconds,
                "run_mfu": clock.flops / seconds / (self.peak_flops * self.world_size),
                "run_steps_measured": clock.steps, "run_seconds_measured": seconds,
                "loop_tokens_per_s": clock.real_tokens / loop_seconds,
                "loop_mfu": clock.flops / loop_seconds / (self.peak_flops * self.world_size),
                "loop_seconds_measured": loop_seconds}


# ---------------------------------------------------------------------------------------------------- helpers


def stage_for_training(batch: dict, model_cfg) -> tuple[dict[str, int], StagedInputs]:
    """A micro-batch's counts (tokens, FLOPs' inputs) and its staged model inputs, unpinned: what a DataLoader
    worker computes and sends back (top level, so it pickles where workers are spawned)."""
    return M.batch_counts(batch, model_cfg.sparse_mlm_head), stage_inputs(batch, model_cfg)


def staged_finisher(device: torch.device, slots: Optional[SharedSlots] = None
                    ) -> Callable[[tuple[dict[str, int], Any]], tuple[dict[str, int], StagedInputs]]:
    """What the training process does to a (counts, StagedInputs or SlotRef) item from stage_for_training: takes it
    out of its shared slot, and page-locks it for a GPU (so its copy is asynchronous)."""
    return functools.partial(take_staged, slots=slots, pin=device.type == "cuda")


def _freeze_setup_objects() -> None:
    """Moves every object alive after setup (modules, DeepSpeed's bookkeeping, imported libraries: millions of
    objects) out of the cyclic garbage collector's reach. Collections then scan only what the loop allocates, so
    a full collection no longer stalls a training step for tens of milliseconds; cyclic garbage made later is
    still collected. Garbage from setup is collected first, so nothing dead is kept."""
    gc.collect()
    gc.freeze()


def _set_progress_total(progress: ProgressBar, total: int) -> None:
    """[budget] The progress bar's end once the budget has set the step count."""
    if progress.bar is not None:
        progress.bar.total = total
        progress.bar.refresh()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _record_event(device: torch.device):
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()
    return event


def _as_float(value) -> Optional[float]:
    if value is None:
        return None
    return float(value.item() if torch.is_tensor(value) else value)
