"""Does the trainer keep up with the plain training step? One call, the same model size and the same data.

  trainer  pretrain_bert.py's loop for --steps steps: its DeepSpeed engine, data loading, a log line every 10 steps,
           a checkpoint halfway and at the end; throughput from the trainer's own summary (after its first window).
  plain    megabert + torch fused AdamW, no engine (benchmarks/plain_step.py), on global batches of the same data
           held on the device, timed in a block after each of the trainer's log windows but the last (a trainer
           callback, left out of its clock), as many steps as a window has: trainer window, plain block, trainer
           window, ... -- a machine drifting over the call slows both alike. The RNG streams are put back after
           each block, so the trainer's run is exactly what it would be without them.
  engine   with --engine-step, each block also times the trainer's own step (megabert.train.step.TrainStep over its
           engine) on the same in-memory batches: the engine's cost without the data path. Those steps train the
           trainer's model further (its losses then differ from a plain run); the lr schedule is put back.

  profile  with --profile, torch.profiler records the trainer's third window and one more (untimed) plain block:
           GPU milliseconds per step in GEMMs, attention, other kernels and idle for both, the Chrome traces kept
           (python -m benchmarks.device_timeline <trace> lists the idle gaps and the host work inside them).

Reported: real tokens/s and MFU of each, trainer / plain over the whole run and per (window, next block) pair as a
geometric mean with its standard error (benchmarks/trainer_ratio.py pools the pairs of several runs).

    python -m benchmarks.trainer --config configs/base.json --steps 200 --global_batch_size 1024
    python -m benchmarks.trainer --config configs/tiny.json --steps 20 --parallel.device cpu
    torchrun --nproc_per_node 8 -m benchmarks.trainer --config configs/base.json

Extra `--section.key value` arguments override the config. The bundled sample corpus is preprocessed first when
the config points at it and it is missing. Results: printed, and written to <output_dir>/bench_trainer.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from benchmarks.plain_step import PlainStep
from benchmarks.trainer_ratio import paired_ratio
from megabert.config import apply_overrides, load_config
from megabert.train import metrics as M
from megabert.train.step import TrainStep
from megabert.train.trainer import Trainer, compile_wanted, prepare_batch
from megabert.utils.rng import get_rng_state, set_rng_state

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PREFIX = "data/sample/c4_sample_text_document"
PROFILED_WINDOW = 3  # after start-up (window 1) and the first steady one


def ensure_sample_data(cfg) -> None:
    """Preprocess the bundled corpus when the config points at it and it is not there yet."""
    if cfg.data.data_path == [SAMPLE_PREFIX] and not (REPO / (SAMPLE_PREFIX + ".idx")).is_file():
        subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input",
                        str(REPO / "data/sample/c4-train.00000-of-00001.json.gz"), "--output-prefix",
                        str(REPO / "data/sample/c4_sample"), "--tokenizer-type", "BertWordPieceLowerCase",
                        "--vocab-file", str(REPO / "data/sample/vocab.txt"), "--workers", "4"], check=True)


def benchmark_trainer(config: str, settings: list[tuple[str, str]], overrides: list[str]) -> Trainer:
    """A set-up Trainer on `config` with the benchmark's `settings`, then the user's `--section.key value`
    `overrides` on top; the bundled sample corpus is preprocessed first when the config needs it."""
    cfg = load_config(config, validate=False)
    apply_overrides(cfg, settings)
    apply_overrides(cfg, overrides)
    cfg.validate()
    ensure_sample_data(cfg)
    trainer = Trainer(cfg)
    trainer.setup()
    return trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ResidentBatches:
    """`count` global batches of this rank from the start of the data, prepared as the trainer prepares them and
    put on the device: per global batch, the micro-batches' model inputs, real tokens and useful FLOPs."""

    def __init__(self, trainer: Trainer, count: int):
        source = trainer.data.train_batches(consumed_samples=0)
        pin = trainer.device.type == "cuda"
        self.batches, self.real_tokens, self.flops = [], [], []
        for _ in range(count):
            micro = [prepare_batch(next(source), trainer.cfg.model, pin) for _ in range(trainer.accum)]
            self.batches.append([packed for _, packed in micro])
            self.real_tokens.append(sum(counts["real_tokens"] for counts, _ in micro))
            self.flops.append(sum(M.training_flops(trainer.cfg.model, counts) for counts, _ in micro))
        getattr(source, "close", lambda: None)()
        self.on_device = [[packed.to(trainer.device) for packed in micro] for micro in self.batches]


class ReferenceBlocks:
    """The trainer callback: after each log window but the last, `steps` plain steps (and with engine_step the
    trainer's own step) on resident batches, timed with the device drained at both ends. With profile_window k,
    torch.profiler records the trainer's k-th window and an extra, untimed plain block after it."""

    def __init__(self, trainer: Trainer, steps: int, engine_step: bool, profile_window: int = 0,
                 trace_dir: Optional[Path] = None):
        self.trainer, self.steps = trainer, steps
        self.profile_window, self.trace_dir, self.windows_seen = profile_window, trace_dir, 0
        self.profiler = None
        self.profiles: dict[str, dict] = {}
        self.resident = ResidentBatches(trainer, steps)
        self.plain = PlainStep(trainer.cfg, trainer.device, seed=trainer.cfg.seed, mlm_output=trainer.step.mlm_output)
        self.engine_step = TrainStep(trainer.engine, trainer.optimizer, trainer.device, trainer.accum,
                                     trainer.world_size, trainer.step.mlm_output) if engine_step else None
        self.blocks: dict[str, list[float]] = {"plain": [], "engine": []}  # seconds per block

    def on_window_end(self, trainer: Trainer, metrics: dict) -> None:
        self.windows_seen += 1
        if self.profiler is not None:  # the profiled window has ended
            self.profiles["trainer"] = self._stop_profiler("trainer")
        if trainer.state.step >= trainer.cfg.schedule.total_steps:
            return
        rng = get_rng_state()
        if not self.blocks["plain"]:  # untimed: a compiled plain step compiles here, as the trainer did in window 1
            self.plain(self.resident.on_device[0])
        self.blocks["plain"].append(self._time(lambda i: self.plain(self.resident.on_device[i])))
        if self.windows_seen == self.profile_window:
            self._start_profiler()
            self._time(lambda i: self.plain(self.resident.on_device[i]))
            self.profiles["plain"] = self._stop_profiler("plain")
        if self.engine_step is not None:
            schedule = trainer.engine.lr_scheduler.state_dict()
            packed = self.resident.batches
            self.blocks["engine"].append(self._time(lambda i: self.engine_step(i + 1, iter(
                [(None, p) for p in packed[i]]))))
            self.engine_step.read_pending(0)
            trainer.engine.lr_scheduler.load_state_dict(schedule)
        set_rng_state(rng)
        if self.windows_seen + 1 == self.profile_window:
            self._start_profiler()

    def _start_profiler(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.trainer.device.type == "cuda" else [])
        self.profiler = profile(activities=activities)
        self.profiler.start()

    def _stop_profiler(self, name: str) -> dict:
        """GPU milliseconds per step in GEMMs, attention, other kernels and idle (benchmarks.compiled_step's
        breakdown) of what was recorded; the Chrome trace is kept as trace_<name>.json.gz."""
        from benchmarks.compiled_step import kernel_breakdown
        from benchmarks.device_timeline import load_trace

        _sync(self.trainer.device)
        self.profiler.stop()
        path = self.trace_dir / f"trace_{name}.json.gz"
        self.profiler.export_chrome_trace(str(path))  # gzip-compressed, by its suffix
        self.profiler = None
        return kernel_breakdown(load_trace(path), self.steps)

    def _time(self, step) -> float:
        device = self.trainer.device
        _sync(device)
        start = time.perf_counter()
        for i in range(self.steps):
            step(i)
        _sync(device)
        return time.perf_counter() - start

    def rates(self, kind: str) -> dict:
        """Real tokens/s (all replicas) and MFU over every block of `kind`, and per block."""
        seconds = self.blocks[kind]
        if not seconds:
            return {}
        tokens, flops = sum(self.resident.real_tokens), sum(self.resident.flops)
        world, tp = self.trainer.world_size, self.trainer.cfg.parallel.tensor_parallel_size
        per_block = [tokens * world / tp / s for s in seconds]
        total = sum(seconds)
        return {"tokens_per_s": tokens * len(seconds) * world / tp / total,
                "mfu": flops * len(seconds) / tp / total / self.trainer.telemetry.peak_flops,
                "blocks_tokens_per_s": per_block, "steps": self.steps * len(seconds), "seconds": total}


def engine_step_seconds(trainer: Trainer, steps: int, warmup: int = 3) -> float:
    """Seconds per optimizer step of the trainer's own step (a TrainStep over its engine) on one global batch of
    its data replayed from pinned host memory: the engine without the data path (no loader, no prefetch)."""
    packed = ResidentBatches(trainer, 1).batches[0]
    step = TrainStep(trainer.engine, trainer.optimizer, trainer.device, trainer.accum, trainer.world_size,
                     trainer.step.mlm_output)
    run = lambda i: step(i + 1, iter([(None, p) for p in packed]))
    trainer.engine.train()
    for i in range(warmup):
        run(i)
    _sync(trainer.device)
    start = time.perf_counter()
    for i in range(steps):
        run(warmup + i)
    _sync(trainer.device)
    seconds = time.perf_counter() - start
    step.read_pending(0)
    return seconds / steps


def _windows(output_dir: Path) -> list[dict]:
    """This run's log windows (a fresh run moves an earlier run's metrics.jsonl aside)."""
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "train/tokens_per_s" in r]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=200, help="trainer steps (default 200)")
    parser.add_argument("--engine-step", action="store_true", help="also time the trainer's own step on the "
                        "in-memory batches in each block (its model then trains further)")
    parser.add_argument("--zero-stage", type=int, default=None, help="ZeRO stage (default: the config's)")
    parser.add_argument("--mlm-output", choices=["logits", "loss"], default=None,
                        help="the trainer's (and the plain step's) MLM output: [masked, vocab] logits then cross "
                        "entropy, or the fused loss (default: the trainer's own)")
    parser.add_argument("--profile", action="store_true", help="profile the trainer's third log window and a plain "
                        "block after it: GPU time per step in GEMMs / attention / other / idle, traces kept")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    if args.steps <= 20:
        parser.error("--steps must be > 20: the first log window (start-up, compilation) is not measured and the "
                     "pairs need two more")

    out = next((overrides[i + 1] for i, a in enumerate(overrides[:-1]) if a == "--output_dir"),
               f"runs/bench_trainer/{Path(args.config).stem}")
    trainer = benchmark_trainer(args.config, [
        ("schedule.total_steps", str(args.steps)), ("output_dir", out),
        ("checkpoint.dir", f"{out}/checkpoints"), ("checkpoint.resume", "none"),
        ("checkpoint.save_interval", str(max(1, args.steps // 2))), ("checkpoint.keep_last", "1"),
        ("logging.log_interval", "10"), ("logging.eval_interval", "0")]
        + ([("parallel.zero_stage", str(args.zero_stage))] if args.zero_stage is not None else []), overrides)
    cfg = trainer.cfg
    if args.mlm_output is not None:
        trainer.step.mlm_output = args.mlm_output
    Path(out).mkdir(parents=True, exist_ok=True)
    blocks = ReferenceBlocks(trainer, cfg.logging.log_interval, args.engine_step,
                             profile_window=PROFILED_WINDOW if args.profile else 0, trace_dir=Path(out))
    trainer.callbacks.append(blocks)
    summary = trainer.train()

    plain, engine = blocks.rates("plain"), blocks.rates("engine")
    windows = [r["train/tokens_per_s"] for r in _windows(Path(cfg.output_dir))]
    pairs = [pair for i, pair in enumerate(zip(windows, plain["blocks_tokens_per_s"]), start=1)
             if i > 1 and i != blocks.profile_window]  # the first window is start-up; a profiled one is slowed
    result = {
        "config": args.config, "steps": args.steps, "zero_stage": cfg.parallel.zero_stage,
        "precision": cfg.parallel.precision, "mlm_output": trainer.step.mlm_output,
        "compile": compile_wanted(cfg.parallel, trainer.device)[0], "deepspeed_extra": cfg.deepspeed_extra,
        "micro_batch_size": cfg.micro_batch_size,
        "global_batch_size": cfg.global_batch_size, "world_size": trainer.world_size,
        "device": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
        "torch": torch.__version__, "peak_matmul_tflops": trainer.telemetry.peak_flops / 1e12,
        "deepspeed_zero": trainer.ds_config["zero_optimization"],
        "optimizer_wrapper": type(trainer.engine.optimizer).__name__,
        "trainer_tokens_per_s": summary.get("run_tokens_per_s"), "trainer_mfu": summary.get("run_mfu"),
        "trainer_loop_tokens_per_s": summary.get("loop_tokens_per_s"), "trainer_loop_mfu": summary.get("loop_mfu"),
        "trainer_steps_measured": summary.get("run_steps_measured"),
        "trainer_loop_seconds_measured": summary.get("loop_seconds_measured"),
        "final_train_loss": summary.get("loss"),
        "plain": plain, "window_pairs": pairs,
        "trainer_loop_over_plain": (summary.get("loop_tokens_per_s") or 0.0) / plain["tokens_per_s"],
        "trainer_over_plain": (summary.get("run_tokens_per_s") or 0.0) / plain["tokens_per_s"],
    }
    if len(pairs) >= 2:
        result["trainer_over_plain_paired"] = paired_ratio(pairs)
    if blocks.profiles:
        result["profile_ms_per_step"] = blocks.profiles
    if engine:
        result["engine"] = engine
        result["engine_over_plain"] = engine["tokens_per_s"] / plain["tokens_per_s"]
    if trainer.rank == 0:
        print("\nlog windows (real tokens/s):")
        for i, rate in enumerate(windows):
            after = plain["blocks_tokens_per_s"][i] if i < len(plain["blocks_tokens_per_s"]) else None
            print(f"  window {i + 1:>3}: trainer {rate:>12,.0f}" + (f"   plain after it {after:>12,.0f}" if after
                                                                      else ""))
        rows = [("trainer, to the end of the last step", result["trainer_loop_tokens_per_s"], result["trainer_loop_mfu"]),
                ("trainer, to the end of the final save", result["trainer_tokens_per_s"], result["trainer_mfu"]),
                ("plain step, between the trainer's windows", plain["tokens_per_s"], plain["mfu"])]
        if engine:
            rows.append(("trainer's engine step, in-memory batches", engine["tokens_per_s"], engine["mfu"]))
        print(f"\n{'':48}{'real tokens/s':>16}{'MFU':>9}")
        for name, rate, mfu in rows:
            print(f"{name:48}{rate or 0.0:>16,.0f}{100 * (mfu or 0.0):>8.1f}%")
        paired = result.get("trainer_over_plain_paired")
        print(f"trainer / plain step = {result['trainer_loop_over_plain']:.3f} to the end of the last step, "
              f"{result['trainer_over_plain']:.3f} to the end of the final save"
              + (f"; per window pair {paired['ratio']:.3f} +- {paired['se']:.3f} ({paired['pairs']} pairs)"
                 if paired else "") + (f"; engine step / plain {result['engine_over_plain']:.3f}" if engine else "")
              + f" (target >= 0.95); {result['device']}, torch {result['torch']}")
        for name, breakdown in blocks.profiles.items():
            print(f"profile, {name} (ms per step): " + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items()))
        print("BENCH_TRAINER " + json.dumps(result))
        (Path(out) / "bench_trainer.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
