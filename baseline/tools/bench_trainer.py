#!/usr/bin/env python3
"""Does the trainer keep up with its own training step? One call, one GPU, the same model and engine:

  1. the trainer: pretrain_bert.py's loop on the config for --steps steps (DeepSpeed ZeRO-2, bf16, real data
     loading, a log line every 10 steps, a checkpoint halfway and at the end); throughput after the first log
     window from the trainer's own summary, to the end of the last step (the halfway checkpoint included) and
     to the end of the final save;
  2. the bare step: the same DeepSpeed engine running forward/backward/step on global batches of the same data
     put on the device beforehand (no data loading, no logging, no checkpoints), timed after warm-up: distinct
     batches, so the device sees the varying token counts of real data (the reference), and one batch replayed
     (the fixed shapes of a kernel benchmark, for comparison);
  2b. with --interleave, the bare step also between the trainer's log windows (as many steps as a window has):
     trainer window, bare block, trainer window, ... -- the ratio free of the machine's drift over the call; with
     --attribute also the bare step fed by a second input pipeline and the trainer's step on batches staged in
     memory, which split the trainer's loss into feeding and the step's own work;
  3. with --breakdown, the host's share, in interleaved rounds: the bare step, the bare step while the staging
     thread and the DataLoader run beside it, and the trainer's own step on loader batches staged ahead on a
     thread or in the loop (StepVariants);
  4. with --profile N, torch.profiler traces of N bare and N trainer steps: how long the device idled in each
     and what the host was doing meanwhile (tools/device_timeline.py).

All report real (non-pad) tokens/s and MFU with the same FLOP count and the same measured matmul peak; the
trainer should keep >= 95% of the bare step. With --bare-before the bare step is timed before the run as well
(and undone from a checkpoint), and the faster of the two bare measurements is the reference: machines lent for
a call were seen to speed up by ~9% over its first minutes, which would otherwise count against whichever runs
first.

    python tools/bench_trainer.py --config configs/base.json --steps 300            # one GPU (or CPU)
    deepspeed --num_gpus 1 tools/bench_trainer.py --config configs/base.json      # through the launcher
    python tools/bench_trainer.py --config configs/tiny.json --steps 20 --bare-steps 2 --short-steps 2 --parallel.device cpu

Extra `--section.key value` arguments override the config. The bundled sample corpus is preprocessed first
when the config's data is missing. Results: printed, and written to <output_dir>/bench_trainer.json.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from megabert.config import apply_overrides, load_config  # noqa: E402
from megabert.train import metrics as M  # noqa: E402
from megabert.model.inputs import StagedInputs  # noqa: E402
from megabert.train.trainer import LOOP_SWITCH_INTERVAL_S, Trainer, stage_for_training, staged_finisher  # noqa: E402
from trainer_ratio import paired_ratio  # noqa: E402  (tools/, this script's directory)

SAMPLE_PREFIX = "data/sample/c4_sample_text_document"


def ensure_sample_data(cfg) -> None:
    """Preprocess the bundled corpus when the config points at it and it is not there yet."""
    if cfg.data.data_path == [SAMPLE_PREFIX] and not (REPO / (SAMPLE_PREFIX + ".idx")).is_file():
        subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input",
                        str(REPO / "data/sample/c4-train.00000-of-00001.json.gz"), "--output-prefix",
                        str(REPO / "data/sample/c4_sample"), "--tokenizer-type", "BertWordPieceLowerCase",
                        "--vocab-file", str(REPO / "data/sample/vocab.txt"), "--workers", "4"], check=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _timed(trainer: Trainer, step: Callable[[], None], steps: int, warmup: int) -> float:
    """Seconds for `steps` calls of `step` after `warmup` untimed ones, the device drained at both ends."""
    trainer.engine.train()
    for _ in range(warmup):
        step()
    _sync(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(trainer.device)
    return time.perf_counter() - start


def _rates(trainer: Trainer, real_tokens: float, flops: float, seconds: float) -> dict[str, float]:
    """Real tokens/s over all replicas and MFU, from one rank's counts (every replica ran its own batches)."""
    world, tp = trainer.world_size, trainer.cfg.parallel.tensor_parallel_size
    return {"tokens_per_s": real_tokens * world / tp / seconds,
            "mfu": flops / tp / seconds / trainer.peak_flops, "seconds": seconds}


def _staged_global_batches(trainer: Trainer, count: int) -> list[list[tuple[dict, StagedInputs]]]:
    """`count` global batches of this rank from the start of the data, counted and staged as the trainer's own
    pipeline does it (in the DataLoader worker) and pinned on a GPU: [global batch][micro-batch] (counts, staged)."""
    stage = functools.partial(stage_for_training, model_cfg=trainer.cfg.model)
    source, finish = trainer.data.train_batches(consumed_samples=0, transform=stage), staged_finisher(trainer.device)
    return [[finish(next(source)) for _ in range(trainer.accum)] for _ in range(count)]


def _resident_global_batches(trainer: Trainer, count: int,
                             staged: list[list[tuple[dict, StagedInputs]]] | None = None
                             ) -> tuple[list[list[dict]], float, float]:
    """`count` global batches of this rank (or those of `staged`) put on the device beforehand, with their mean
    real tokens and FLOPs per global batch."""
    staged = staged if staged is not None else _staged_global_batches(trainer, count)
    batches, real_tokens, flops = [], 0, 0.0
    for micro in staged:
        for counts, _ in micro:
            real_tokens += counts["real_tokens"]
            flops += M.training_flops(trainer.cfg.model, counts)
        batches.append([inputs.to(trainer.device) for _, inputs in micro])
    return batches, real_tokens / len(staged), flops / len(staged)


def _bare_step(trainer: Trainer, resident: list[list[dict]], staging=None) -> Callable[[], None]:
    """One optimizer step of the trainer's engine on the next resident global batch. With `staging` (a
    StagedBatches), each micro-batch also takes a staged item and drops it: the staging thread and the DataLoader
    then run exactly as in the trainer, but the step computes on the resident batches -- their interference alone."""
    engine, calls = trainer.engine, itertools.count()

    def step() -> None:
        for inputs in resident[next(calls) % len(resident)]:
            if staging is not None:
                next(staging)
            engine.backward(engine(**inputs).loss)
            engine.step()

    return step


def bare_step_throughput(trainer: Trainer, steps: int, warmup: int = 3, distinct: bool = False) -> dict[str, float]:
    """Optimizer steps of the trainer's engine on global batches already on the device: no host work at all.

    distinct=False replays one global batch every step (the fixed shapes of a kernel benchmark); True gives every
    step its own batch, so the device sees the varying token counts that real data has."""
    resident, real_tokens, flops = _resident_global_batches(trainer, steps + warmup if distinct else 1)
    seconds = _timed(trainer, _bare_step(trainer, resident), steps, warmup)
    return {**_rates(trainer, real_tokens * steps, flops * steps, seconds), "steps": steps}


def bare_step_before_training(trainer: Trainer, steps: int, scratch: Path) -> dict[str, float]:
    """The bare step timed before the trainer's run, on the machine as the run meets it, then undone: the engine
    (weights, optimizer, schedule) is restored from a checkpoint taken first and the RNG states are put back, so
    the trainer starts exactly where it would have. With the bare step after the run too, a machine that speeds
    up or slows down over the call shows as a difference between the two instead of skewing the ratio."""
    import random

    import numpy as np

    engine, cuda = trainer.engine, trainer.device.type == "cuda"
    engine.save_checkpoint(str(scratch), tag="before_bare_step")
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
           torch.cuda.get_rng_state(trainer.device) if cuda else None)
    try:
        return bare_step_throughput(trainer, steps, distinct=True)
    finally:
        engine.load_checkpoint(str(scratch), tag="before_bare_step")
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda:
            torch.cuda.set_rng_state(rng[3], trainer.device)
        if trainer.rank == 0:
            shutil.rmtree(scratch, ignore_errors=True)


class InterleavedBlocks:
    """Bare steps timed between the trainer's log windows (Trainer._between_windows): `steps` of them after every
    window but the last, on distinct global batches put on the device beforehand. Trainer window, bare block,
    trainer window, ... : both see the machine of the same minutes, so drift over the call (clocks, temperature,
    neighbours on the host) cancels out of their ratio instead of landing on whichever ran first.

    The bare steps update the model as any training step does (that is what is timed), so an interleaved run's
    losses are not those of a plain run; the learning-rate schedule is put back after each block, so the trainer's
    own steps see the lr they would have. The halfway checkpoint is saved after the block, so its background write
    overlaps the trainer's next window, as in a plain run.

    attribute=True adds two more blocks per gap, which split the trainer's loss against the bare step in two:
      fed   the same bare steps on the same resident batches, while a second input pipeline of the trainer (its own
            DataLoader worker and staging thread, started once and kept running) hands over a staged micro-batch
            per micro-step, which is dropped: what feeding costs the step, in steady state;
      step  the trainer's own step (Trainer._train_step: the copy to the device, the loss and non-finite
            bookkeeping) on the same batches staged and pinned beforehand, no pipeline running: what the step's
            own extra work costs.
    The order of the blocks rotates from gap to gap."""

    KINDS = ("bare", "fed", "step")

    def __init__(self, trainer: Trainer, steps: int, blocks: int, attribute: bool = False):
        self.trainer, self.steps = trainer, steps
        staged = _staged_global_batches(trainer, steps * blocks)
        self.resident, self.real_tokens, self.flops = _resident_global_batches(trainer, steps * blocks, staged)
        self.kinds = self.KINDS if attribute else ("bare",)
        self.seconds: dict[str, list[float]] = {kind: [] for kind in self.kinds}
        self._steps: dict[str, Callable[[], None]] = {"bare": _bare_step(trainer, self.resident)}
        self._feeding = None  # the second pipeline, started at the first gap (after the trainer's own)
        if attribute:
            self._steps["step"] = self._trainer_step_on([item for micro in staged for item in micro])

    def _trainer_step_on(self, staged: list) -> Callable[[], None]:
        """Trainer._train_step on `staged`, in order (its flags read a step late, as in the loop)."""
        from megabert.train.progress import Window

        trainer, items, window = self.trainer, iter(staged), Window()
        return lambda: trainer._train_step(items, window)

    def _time_block(self, kind: str) -> float:
        if kind != "step":
            return _timed(self.trainer, self._steps[kind], self.steps, warmup=0)
        trainer = self.trainer  # the loop's own pending non-finite flags wait aside, for its next step to check
        kept, trainer._pending_flags = trainer._pending_flags, None
        try:
            return _timed(trainer, self._steps[kind], self.steps, warmup=0)
        finally:
            trainer._read_pending_flags()  # the block's last step's: dropped
            trainer._pending_flags = kept

    def __call__(self) -> float:
        start = time.perf_counter()
        scheduler, optimizer = self.trainer.scheduler, self.trainer.optimizer
        schedule, lrs = scheduler.state_dict(), [group["lr"] for group in optimizer.param_groups]
        if "fed" in self.kinds and self._feeding is None:
            self._feeding = self.trainer._staged_train_batches()
            self._steps["fed"] = _bare_step(self.trainer, self.resident, staging=self._feeding)
        gap = len(self.seconds["bare"])
        order = self.kinds[gap % len(self.kinds):] + self.kinds[:gap % len(self.kinds)]
        for kind in order:
            self.seconds[kind].append(self._time_block(kind))
        scheduler.load_state_dict(schedule)
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        return time.perf_counter() - start

    def close(self) -> None:
        if self._feeding is not None:
            self._feeding.close()
            self._feeding = None

    def rates(self, kind: str = "bare") -> dict[str, float] | None:
        """Over all blocks of `kind`: real tokens/s and MFU (totals over total seconds, as the trainer's clock
        counts) and each block's tokens/s; None for a kind not timed."""
        if kind not in self.seconds:
            return None
        seconds, steps = self.seconds[kind], self.steps * len(self.seconds[kind])
        return {**_rates(self.trainer, self.real_tokens * steps, self.flops * steps, sum(seconds)),
                "steps": steps, "blocks_tokens_per_s": [_rates(self.trainer, self.real_tokens * self.steps,
                                                               self.flops * self.steps, s)["tokens_per_s"]
                                                        for s in seconds]}


class InterleavedTrainer(Trainer):
    """The trainer, with the blocks of `bare_blocks` (an InterleavedBlocks) timed between its log windows."""

    bare_blocks: InterleavedBlocks | None = None

    def _between_windows(self) -> float:
        return self.bare_blocks() if self.bare_blocks is not None else 0.0


class StepVariants:
    """The trainer's step and the bare step side by side, timed in interleaved rounds (A B C A B C ...) so that a
    drift of the machine (clocks, temperature) falls on every variant alike:

      bare                   the engine on resident batches (as bare_step_throughput with distinct batches)
      bare + staging thread  the same, while the staging thread and the DataLoader run as in the trainer
      step, staged ahead     Trainer._train_step on loader batches staged `stage_ahead` ahead (the trainer's loop
                             without logging and checkpoints)
      step, staged in loop   the same with stage_ahead 0: no thread, the loop takes (and pins) each batch itself
      step, staged on thread the staged-ahead step with the staging (counts, unpadding bookkeeping) on the thread
                             of the training process instead of in the DataLoader workers
      step, GIL switch 5 ms  the staged-ahead step with Python's default thread switch interval instead of the
                             trainer's shorter one (LOOP_SWITCH_INTERVAL_S): what that setting buys
    All but the last run under the trainer's switch interval, as its loop does.
    """

    def __init__(self, trainer: Trainer, steps: int, stage_ahead: int, warmup: int = 2):
        self.trainer, self.steps, self.warmup = trainer, steps, warmup
        self.stage_ahead = max(stage_ahead, 1)
        self.resident, self.real_tokens, self.flops = _resident_global_batches(trainer, steps + warmup)
        self.seconds: dict[str, list[float]] = {}
        self.counts: dict[str, tuple[float, float]] = {}  # loader variants: (real tokens, flops) per timed step

    def _run(self, name: str, stage_ahead: int | None) -> None:
        """Times one variant (chosen by its name) and appends its seconds."""
        from megabert.train.progress import Window

        trainer = self.trainer
        batches, switch_interval = None, sys.getswitchinterval()
        sys.setswitchinterval(0.005 if "GIL switch" in name else LOOP_SWITCH_INTERVAL_S)
        if stage_ahead is not None:
            trainer.cfg.data.stage_ahead = stage_ahead
            batches = trainer._staged_train_batches(stage_in_workers="on thread" not in name)
        try:
            if name.startswith("bare"):
                step = _bare_step(trainer, self.resident, staging=batches)
                seconds = _timed(trainer, step, self.steps, self.warmup)
            else:
                window = Window()
                seconds = _timed(trainer, lambda: trainer._train_step(batches, window), self.steps, self.warmup)
                share = self.steps / (self.steps + self.warmup)  # the window counted warm-up steps too
                self.counts[name] = (window.counts["real_tokens"] * share / self.steps,
                                     window.counts["flops"] * share / self.steps)
        finally:
            sys.setswitchinterval(switch_interval)
            if batches is not None:
                batches.close()
        self.seconds.setdefault(name, []).append(seconds)

    def variants(self) -> list[tuple[str, int | None]]:
        """(name, stage_ahead) of every variant, in the order of a round."""
        return [("bare", None), ("bare + staging thread", self.stage_ahead),
                (f"step, staged {self.stage_ahead} ahead", self.stage_ahead), ("step, staged in loop", 0),
                ("step, staged on thread", self.stage_ahead), ("step, GIL switch 5 ms", self.stage_ahead)]

    def run(self, rounds: int, only: list[str] | None = None) -> dict[str, dict]:
        """Times the variants (those whose names start with one of `only`, when given) in `rounds` rounds."""
        variants = [(name, ahead) for name, ahead in self.variants()
                    if not only or any(name.startswith(prefix) for prefix in only)]
        if not variants:
            raise ValueError(f"no --variants match {only}; the variants are "
                             f"{', '.join(name for name, _ in self.variants())}")
        for _ in range(rounds):
            for name, stage_ahead in variants:
                self._run(name, stage_ahead)
        out = {}
        for name, _ in variants:
            real_tokens, flops = self.counts.get(name, (self.real_tokens, self.flops))
            per_round = [_rates(self.trainer, real_tokens * self.steps, flops * self.steps, s)
                         for s in self.seconds[name]]
            best = statistics.median(r["tokens_per_s"] for r in per_round)
            out[name] = {"tokens_per_s": best, "mfu": statistics.median(r["mfu"] for r in per_round),
                         "rounds_tokens_per_s": [r["tokens_per_s"] for r in per_round], "steps": self.steps}
        return out


def profile_steps(trainer: Trainer, out: Path, steps: int, stage_ahead: int) -> dict[str, dict]:
    """torch.profiler traces of `steps` bare steps and `steps` trainer steps (staged ahead); how busy the device
    was in each and its longest idle gaps, with the host work during them (tools/device_timeline.py)."""
    from torch.profiler import ProfilerActivity, profile

    from device_timeline import device_timeline, summarize
    from megabert.train.progress import Window

    resident, _, _ = _resident_global_batches(trainer, steps + 2)
    trainer.cfg.data.stage_ahead = max(stage_ahead, 1)
    batches = trainer._staged_train_batches()
    window = Window()
    loops = {"bare": _bare_step(trainer, resident),
             "trainer_step": lambda: trainer._train_step(batches, window)}
    report = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    try:
        for name, step in loops.items():
            _timed(trainer, step, 0, warmup=2)
            with profile(activities=activities) as prof:
                _timed(trainer, step, steps, warmup=0)
            path = out / f"trace_{name}.json"
            prof.export_chrome_trace(str(path))
            events = json.loads(path.read_text())["traceEvents"]
            with gzip.open(str(path) + ".gz", "wt") as f:  # kept for chrome://tracing or Perfetto
                json.dump({"traceEvents": events}, f)
            path.unlink()
            timeline = device_timeline(events)
            report[name] = {"busy_fraction": timeline.busy_fraction, "idle_ms_per_step": timeline.idle_us / 1e3 / steps,
                            "gaps": len(timeline.gaps), "summary": summarize(timeline, name, steps)}
    finally:
        batches.close()
    return report


def _metrics_lines(output_dir: Path) -> int:
    path = output_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _windows(output_dir: Path, skip_lines: int) -> list[dict]:
    """This run's log-window records from metrics.jsonl (appended across runs: earlier lines skipped)."""
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = map(json.loads, path.read_text().splitlines()[skip_lines:])
    return [r for r in records if "train/tokens_per_s" in r]


def _data_wait_seconds(output_dir: Path, skip_lines: int) -> float:
    """Seconds the training loop waited for its next batch over this run's measured windows (the first excluded)."""
    return float(sum(r.get("train/data_seconds", 0.0) for r in _windows(output_dir, skip_lines)[1:]))


def _window_report(output_dir: Path, skip_lines: int, blocks_after: dict[str, list[float]] | None = None) -> list[str]:
    """Per log window of this run: real tokens/s, and since the previous window the CUDA allocator's cudaMalloc
    calls, the process's CPU seconds (all threads), its minor page faults (first touches of memory) and the
    garbage collector's seconds (in the loop only); with --interleave, the tokens/s of the blocks timed after the
    window, by kind (bare; with --attribute also fed and step)."""
    rows, previous = [], {}
    for i, record in enumerate(_windows(output_dir, skip_lines)):
        row = f"step {record['step']:>5}: {record['train/tokens_per_s']:>10,.0f} real tok/s"
        after = [f"{kind} {rates[i]:>9,.0f}" for kind, rates in (blocks_after or {}).items() if i < len(rates)]
        if after:
            row += f" (then {', '.join(after)})"
        for key, label, fmt in (("cuda/device_mallocs", "cudaMalloc calls", "{:>4.0f}"),
                                ("host/cpu_seconds", "CPU s", "{:>5.2f}"),
                                ("host/minor_page_faults", "page faults", "{:>7.0f}"),
                                ("host/gc_seconds", "GC s", "{:>5.3f}")):
            if key in record:
                row += f", {fmt.format(record[key] - previous.get(key, 0))} {label}"
                previous[key] = record[key]
        rows.append(row)
    return rows


def _second_half_rate(output_dir: Path, skip_lines: int) -> float | None:
    """Real tokens/s over the second half of this run's log windows: the trainer's steady state, once whatever
    warms up over the first steps (caches, the machine) has."""
    half = _windows(output_dir, skip_lines)
    half = [r for r in half[len(half) // 2:] if r.get("train/window_seconds")]
    seconds = sum(r["train/window_seconds"] for r in half)
    return sum(r["train/tokens_per_s"] * r["train/window_seconds"] for r in half) / seconds if seconds else None


def _override_value(overrides: list[str], key: str) -> str | None:
    for i, arg in enumerate(overrides):
        if arg == f"--{key}" and i + 1 < len(overrides):
            return overrides[i + 1]
        if arg.startswith(f"--{key}="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=300, help="trainer steps (default 300)")
    parser.add_argument("--bare-steps", type=int, default=None, help="timed optimizer steps of the bare step on "
                        "distinct batches (default: as many as the trainer's measured steps, so both windows see "
                        "the same amount of data; at most 400)")
    parser.add_argument("--short-steps", type=int, default=20, help="timed steps of the replayed-batch bare step "
                        "and of the --breakdown loops (default 20)")
    parser.add_argument("--breakdown", action="store_true", help="also time, in interleaved rounds, the bare step, "
                        "the bare step beside the staging thread, and the trainer's step staged ahead and in the "
                        "loop: where the trainer's time goes")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the --breakdown variants")
    parser.add_argument("--variants", nargs="+", default=None, metavar="PREFIX", help="time only the --breakdown "
                        "variants whose names start with one of these (e.g. bare 'step, staged 2')")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS", help="also trace STEPS bare and trainer "
                        "steps with torch.profiler and report the device's idle gaps (traces in output_dir)")
    parser.add_argument("--interleave", action="store_true", help="also time bare steps between the trainer's log "
                        "windows (as many as a window has): trainer and bare step measured over the same minutes, "
                        "the ratio free of the machine's drift over the call")
    parser.add_argument("--attribute", action="store_true", help="with --interleave, also time after each window "
                        "the bare step fed by a second input pipeline (its batches dropped) and the trainer's own step "
                        "on batches staged beforehand: what feeding and what the step's own work cost, in steady state")
    parser.add_argument("--bare-before", action="store_true", help="also time the bare step before the trainer's "
                        "run (then undone from a checkpoint): a machine drifting over the call shows up")
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    if args.steps <= 10:
        parser.error("--steps must be > 10: the first 10-step log window (start-up, compilation) is not measured")

    cfg = load_config(args.config, validate=False)
    out = _override_value(overrides, "output_dir") or f"runs/bench_trainer/{Path(args.config).stem}"
    apply_overrides(cfg, [("schedule.total_steps", str(args.steps)), ("parallel.zero_stage", str(args.zero_stage)),
                          ("output_dir", out), ("checkpoint.dir", f"{out}/checkpoints"),
                          ("checkpoint.resume", "none"), ("checkpoint.save_interval", str(max(1, args.steps // 2))),
                          ("checkpoint.keep_last", "1"), ("logging.log_interval", "10"),
                          ("logging.eval_interval", "0")])
    apply_overrides(cfg, overrides)
    cfg.validate()
    ensure_sample_data(cfg)

    stage_ahead = cfg.data.stage_ahead
    earlier_metrics = _metrics_lines(Path(cfg.output_dir))
    trainer = InterleavedTrainer(cfg)
    trainer.setup()
    bare_steps = args.bare_steps or min(args.steps - 10, 400)  # as many as the trainer's measured steps
    before = None
    if args.bare_before:
        before = bare_step_before_training(trainer, bare_steps, Path(cfg.output_dir) / "before_bare_step")
    if args.interleave:
        interval = cfg.logging.log_interval
        windows = -(-args.steps // interval)  # the last one ends at the last step, whole or not
        trainer.bare_blocks = InterleavedBlocks(trainer, interval, blocks=windows - 1, attribute=args.attribute)
    elif args.attribute:
        parser.error("--attribute needs --interleave")
    try:
        summary = trainer.train()
    finally:
        if trainer.bare_blocks is not None:
            trainer.bare_blocks.close()
    bare = bare_step_throughput(trainer, bare_steps, distinct=True)
    replay = bare_step_throughput(trainer, args.short_steps)
    result = {
        "config": args.config, "steps": args.steps, "zero_stage": cfg.parallel.zero_stage,
        "precision": cfg.parallel.precision, "micro_batch_size": cfg.micro_batch_size,
        "global_batch_size": cfg.global_batch_size, "world_size": trainer.world_size,
        "device": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
        "torch": torch.__version__, "peak_matmul_tflops": trainer.peak_flops / 1e12,
        "deepspeed_zero": trainer.ds_config["zero_optimization"],
        "trainer_tokens_per_s": summary.get("run_tokens_per_s"), "trainer_mfu": summary.get("run_mfu"),
        "trainer_loop_tokens_per_s": summary.get("loop_tokens_per_s"), "trainer_loop_mfu": summary.get("loop_mfu"),
        "trainer_steps_measured": summary.get("run_steps_measured"),
        "trainer_loop_seconds_measured": summary.get("loop_seconds_measured"),
        "trainer_data_wait_seconds": _data_wait_seconds(Path(cfg.output_dir), earlier_metrics),
        "bare_tokens_per_s": bare["tokens_per_s"], "bare_mfu": bare["mfu"], "bare_steps": bare["steps"],
        "bare_replay_tokens_per_s": replay["tokens_per_s"], "bare_replay_mfu": replay["mfu"],
        "final_train_loss": summary.get("loss"),
        "trainer_second_half_tokens_per_s": _second_half_rate(Path(cfg.output_dir), earlier_metrics),
    }
    if before is not None:
        result["bare_before_tokens_per_s"], result["bare_before_mfu"] = before["tokens_per_s"], before["mfu"]
    blocks = trainer.bare_blocks
    interleaved, fed, staged_step = ((blocks.rates(), blocks.rates("fed"), blocks.rates("step")) if blocks is not None
                                     else (None, None, None))
    if interleaved is not None:
        result["interleaved_bare"] = interleaved
        for name in ("", "_loop"):
            result[f"trainer{name}_over_interleaved_bare"] = \
                (result[f"trainer{name}_tokens_per_s"] or 0.0) / interleaved["tokens_per_s"]
        windows = [r["train/tokens_per_s"] for r in _windows(Path(cfg.output_dir), earlier_metrics)]
        pairs = list(zip(windows, interleaved["blocks_tokens_per_s"]))[1:]  # the first window: warm-up
        if len(pairs) >= 2:
            result["trainer_over_interleaved_bare_paired"] = paired_ratio(pairs)
    if fed is not None:
        result["interleaved_fed"], result["interleaved_step"] = fed, staged_step
        result["fed_over_interleaved_bare"] = fed["tokens_per_s"] / interleaved["tokens_per_s"]
        result["step_over_interleaved_bare"] = staged_step["tokens_per_s"] / interleaved["tokens_per_s"]
    # The reference is the faster bare measurement: a machine that drifts over the call never flatters the trainer.
    reference = max(bare["tokens_per_s"], before["tokens_per_s"] if before else 0.0)
    result["bare_reference_tokens_per_s"] = reference
    for name in ("", "_loop", "_second_half"):
        result[f"trainer{name}_over_bare"] = (result[f"trainer{name}_tokens_per_s"] or 0.0) / reference
    rows = [("trainer, to the end of the final save", result["trainer_tokens_per_s"], result["trainer_mfu"]),
            ("trainer, to the end of the last step", result["trainer_loop_tokens_per_s"], result["trainer_loop_mfu"]),
            ("trainer, second half of the windows", result["trainer_second_half_tokens_per_s"], None),
            ("bare step (distinct batches on device)", bare["tokens_per_s"], bare["mfu"]),
            ("bare step (one batch replayed)", replay["tokens_per_s"], replay["mfu"])]
    if before is not None:
        rows.insert(3, ("bare step, before the trainer's run", before["tokens_per_s"], before["mfu"]))
    if fed is not None:
        rows.insert(3, ("trainer's step, staged in memory, between", staged_step["tokens_per_s"], staged_step["mfu"]))
        rows.insert(3, ("bare step fed by a 2nd pipeline, between", fed["tokens_per_s"], fed["mfu"]))
    if interleaved is not None:
        rows.insert(3, ("bare step, between the trainer's windows", interleaved["tokens_per_s"], interleaved["mfu"]))
    if args.breakdown:
        variants = StepVariants(trainer, args.short_steps, stage_ahead).run(args.rounds, args.variants)
        result["breakdown"] = variants
        rows += [(f"{name} (median of {args.rounds})", v["tokens_per_s"], v["mfu"]) for name, v in variants.items()]
    if args.profile:
        result["profile"] = profile_steps(trainer, Path(cfg.output_dir), args.profile, stage_ahead)
    if trainer.rank == 0:
        after = {name: rates["blocks_tokens_per_s"] for name, rates in
                 (("bare", interleaved), ("fed", fed), ("step", staged_step)) if rates is not None}
        print("\n".join(["", "log windows:"] + _window_report(Path(cfg.output_dir), earlier_metrics, after)))
        print(f"\n{'':48}{'real tokens/s':>16}{'MFU':>9}")
        for name, rate, mfu in rows:
            print(f"{name:48}{rate or 0.0:>16,.0f}" + ("" if mfu is None else f"{100 * mfu:>8.1f}%"))
        for name, variant in result.get("breakdown", {}).items():
            print(f"  {name}: rounds " + ", ".join(f"{x:,.0f}" for x in variant["rounds_tokens_per_s"]))
        for report in result.get("profile", {}).values():
            print("\n".join(report["summary"]))
        print(f"trainer / bare ({reference:,.0f}, the faster bare measurement) = "
              f"{result['trainer_loop_over_bare']:.3f} to the end of the last step, "
              f"{result['trainer_over_bare']:.3f} to the end of the final save, "
              f"{result['trainer_second_half_over_bare']:.3f} over the second half (target >= 0.95); main thread "
              f"waited {result['trainer_data_wait_seconds']:.2f} s for data; peak matmul "
              f"{result['peak_matmul_tflops']:.1f} TFLOP/s on {result['device']}, torch {result['torch']}")
        if interleaved is not None:
            print(f"trainer / bare step between its windows ({interleaved['tokens_per_s']:,.0f}, "
                  f"{interleaved['steps']} steps) = {result['trainer_loop_over_interleaved_bare']:.3f} to the end of "
                  f"the last step, {result['trainer_over_interleaved_bare']:.3f} to the end of the final save")
            paired = result.get("trainer_over_interleaved_bare_paired")
            if paired:
                print(f"trainer / bare per window pair: {paired['ratio']:.3f} +- {paired['se']:.3f} (standard error, "
                      f"{paired['pairs']} pairs; pool runs with tools/trainer_ratio.py)")
        if fed is not None:
            print(f"between the windows, against the bare step: fed by a second pipeline "
                  f"{result['fed_over_interleaved_bare']:.3f} (what feeding costs), the trainer's step on batches "
                  f"staged in memory {result['step_over_interleaved_bare']:.3f} (what its own work costs)")
        print("BENCH_TRAINER " + json.dumps(result))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bench_trainer.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
