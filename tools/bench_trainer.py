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
  3. with --breakdown, the host's share: the trainer's own step on loader batches staged ahead on a thread
     or in the loop.

All report real (non-pad) tokens/s and MFU with the same FLOP count and the same measured matmul peak; the
trainer should keep >= 95% of the bare step.

    python tools/bench_trainer.py --config configs/base.json --steps 300            # one GPU (or CPU)
    deepspeed --num_gpus 1 tools/bench_trainer.py --config configs/base.json      # through the launcher
    python tools/bench_trainer.py --config configs/tiny.json --steps 20 --bare-steps 2 --short-steps 2 --parallel.device cpu

Extra `--section.key value` arguments override the config. The bundled sample corpus is preprocessed first
when the config's data is missing. Results: printed, and written to <output_dir>/bench_trainer.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
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
from megabert.model.inputs import prepare_inputs  # noqa: E402
from megabert.train.trainer import Trainer  # noqa: E402

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


def _resident_global_batches(trainer: Trainer, count: int) -> tuple[list[list[dict]], float, float]:
    """`count` global batches of this rank, fetched from the trainer's data and put on the device beforehand."""
    source = trainer.data.train_batches(consumed_samples=0)
    batches, real_tokens, flops = [], 0, 0.0
    for _ in range(count):
        micro = []
        for _ in range(trainer.accum):
            batch = next(source)
            c = M.batch_counts(batch, trainer.cfg.model.sparse_mlm_head)
            real_tokens += c["real_tokens"]
            flops += M.training_flops(trainer.cfg.model, c)
            micro.append(prepare_inputs(batch, trainer.cfg.model, trainer.device))
        batches.append(micro)
    return batches, real_tokens / count, flops / count


def bare_step_throughput(trainer: Trainer, steps: int, warmup: int = 3, distinct: bool = False) -> dict[str, float]:
    """Optimizer steps of the trainer's engine on global batches already on the device: no host work at all.

    distinct=False replays one global batch every step (the fixed shapes of a kernel benchmark); True gives every
    step its own batch, so the device sees the varying token counts that real data has."""
    engine = trainer.engine
    resident, real_tokens, flops = _resident_global_batches(trainer, steps + warmup if distinct else 1)
    calls = itertools.count()

    def step() -> None:
        for inputs in resident[next(calls) % len(resident)]:
            engine.backward(engine(**inputs).loss)
            engine.step()

    return {**_rates(trainer, real_tokens * steps, flops * steps, _timed(trainer, step, steps, warmup)), "steps": steps}


def loop_step_throughput(trainer: Trainer, steps: int, stage_ahead: int, warmup: int = 3) -> dict[str, float]:
    """The trainer's own step (Trainer._train_step) on batches from the data loader, staged `stage_ahead`
    micro-batches ahead (0: in the loop): the data path's cost, without logging or checkpoints."""
    from megabert.train.progress import Window

    trainer.cfg.data.stage_ahead = stage_ahead
    batches = trainer._staged_train_batches()
    window = Window()
    try:
        seconds = _timed(trainer, lambda: trainer._train_step(batches, window), steps, warmup)
    finally:
        batches.close()
    per_step = (steps + warmup)  # the window counted warm-up steps too
    return {**_rates(trainer, window.counts["real_tokens"] * steps / per_step, window.counts["flops"] * steps / per_step,
                     seconds), "steps": steps, "stage_ahead": stage_ahead}


def _metrics_lines(output_dir: Path) -> int:
    path = output_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _data_wait_seconds(output_dir: Path, skip_lines: int) -> float:
    """Seconds the training loop waited for its next batch over this run's measured windows (the first excluded);
    metrics.jsonl is appended across runs, so the lines before `skip_lines` belong to earlier ones."""
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return float("nan")
    records = map(json.loads, path.read_text().splitlines()[skip_lines:])
    waits = [r["train/data_seconds"] for r in records if "train/data_seconds" in r]
    return float(sum(waits[1:]))


def _window_report(output_dir: Path, skip_lines: int) -> list[str]:
    """Per log window of this run: real tokens/s and the CUDA allocator's cudaMalloc calls since the last line."""
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows, previous = [], 0
    for record in map(json.loads, path.read_text().splitlines()[skip_lines:]):
        if "train/tokens_per_s" not in record:
            continue
        mallocs = record.get("cuda/device_mallocs")
        rows.append(f"step {record['step']:>5}: {record['train/tokens_per_s']:>10,.0f} real tok/s"
                    + ("" if mallocs is None else f", {mallocs - previous:>4} cudaMalloc calls"))
        previous = mallocs or 0
    return rows


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
    parser.add_argument("--breakdown", action="store_true", help="also time the bare step on distinct batches and "
                        "the trainer's step with and without staging ahead: where the trainer's time goes")
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
    trainer = Trainer(cfg)
    summary = trainer.train()
    bare_steps = args.bare_steps or min(int(summary.get("run_steps_measured") or 20), 400)
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
        "trainer_data_wait_seconds": _data_wait_seconds(Path(cfg.output_dir), earlier_metrics),
        "bare_tokens_per_s": bare["tokens_per_s"], "bare_mfu": bare["mfu"], "bare_steps": bare["steps"],
        "bare_replay_tokens_per_s": replay["tokens_per_s"], "bare_replay_mfu": replay["mfu"],
        "final_train_loss": summary.get("loss"),
    }
    result["trainer_over_bare"] = (result["trainer_tokens_per_s"] or 0.0) / bare["tokens_per_s"]
    result["trainer_loop_over_bare"] = (result["trainer_loop_tokens_per_s"] or 0.0) / bare["tokens_per_s"]
    rows = [("trainer, to the end of the final save", result["trainer_tokens_per_s"], result["trainer_mfu"]),
            ("trainer, to the end of the last step", result["trainer_loop_tokens_per_s"], result["trainer_loop_mfu"]),
            ("bare step (distinct batches on device)", bare["tokens_per_s"], bare["mfu"]),
            ("bare step (one batch replayed)", replay["tokens_per_s"], replay["mfu"])]
    if args.breakdown:
        staged = loop_step_throughput(trainer, args.short_steps, stage_ahead=max(stage_ahead, 1))
        inline = loop_step_throughput(trainer, args.short_steps, stage_ahead=0)
        result["breakdown"] = {"step_staged_ahead": staged, "step_staged_inline": inline}
        rows += [(f"trainer step, staged {staged['stage_ahead']} ahead", staged["tokens_per_s"], staged["mfu"]),
                 ("trainer step, staged in the loop", inline["tokens_per_s"], inline["mfu"])]
    if trainer.rank == 0:
        print("\n".join(["", "log windows:"] + _window_report(Path(cfg.output_dir), earlier_metrics)))
        print(f"\n{'':42}{'real tokens/s':>16}{'MFU':>9}")
        for name, rate, mfu in rows:
            print(f"{name:42}{rate or 0.0:>16,.0f}{100 * (mfu or 0.0):>8.1f}%")
        print(f"trainer / bare = {result['trainer_loop_over_bare']:.3f} to the end of the last step, "
              f"{result['trainer_over_bare']:.3f} to the end of the final save (target >= 0.95); main thread "
              f"waited {result['trainer_data_wait_seconds']:.2f} s for data; peak matmul "
              f"{result['peak_matmul_tflops']:.1f} TFLOP/s on {result['device']}, torch {result['torch']}")
        print("BENCH_TRAINER " + json.dumps(result))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bench_trainer.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
