#!/usr/bin/env python3
"""Does the trainer keep up with its own training step? One call, one GPU, the same model and engine:

  1. the trainer: pretrain_bert.py's loop on the config for --steps steps (DeepSpeed ZeRO-2, bf16, real data
     loading, a log line every 10 steps, a checkpoint halfway and at the end); throughput end to end after the
     first log window, from the trainer's own summary;
  2. the bare step: the same DeepSpeed engine running forward/backward/step on the same global batches already
     resident on the device (no data loading, no logging, no checkpoints), timed after warm-up.

Both report real (non-pad) tokens/s and MFU with the same FLOP count and the same measured matmul peak; the
trainer should keep >= 95% of the bare step.

    python tools/bench_trainer.py --config configs/base.json --steps 300            # one GPU (or CPU)
    deepspeed --num_gpus 1 tools/bench_trainer.py --config configs/base.json      # through the launcher
    python tools/bench_trainer.py --config configs/tiny.json --steps 20 --bare-steps 2 --parallel.device cpu

Extra `--section.key value` arguments override the config. The bundled sample corpus is preprocessed first
when the config's data is missing. Results: printed, and written to <output_dir>/bench_trainer.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

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


def bare_step_throughput(trainer: Trainer, steps: int, warmup: int = 3) -> dict[str, float]:
    """Optimizer steps of the trainer's engine on global batches fetched beforehand and kept on the device."""
    engine, device, accum = trainer.engine, trainer.device, trainer.accum
    batches_cpu, counts = [], {"real_tokens": 0, "flops": 0.0}
    source = trainer.data.train_batches(consumed_samples=0)
    for _ in range(accum):  # one global batch per rank, replayed every step
        batch = next(source)
        c = M.batch_counts(batch, trainer.cfg.model.sparse_mlm_head)
        counts["real_tokens"] += c["real_tokens"]
        counts["flops"] += M.training_flops(trainer.cfg.model, c)
        batches_cpu.append(batch)
    resident = [prepare_inputs(b, trainer.cfg.model, device) for b in batches_cpu]  # no host work in the loop

    def step() -> None:
        for inputs in resident:
            engine.backward(engine(**inputs).loss)
            engine.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    engine.train()
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    world, tp = trainer.world_size, trainer.cfg.parallel.tensor_parallel_size
    tokens_per_s = counts["real_tokens"] * steps * world / tp / seconds  # every replica ran its own batch
    return {"tokens_per_s": tokens_per_s,
            "mfu": counts["flops"] * steps / tp / seconds / trainer.peak_flops,
            "steps": steps, "seconds": seconds}


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
    parser.add_argument("--bare-steps", type=int, default=20, help="timed bare optimizer steps (default 20)")
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

    trainer = Trainer(cfg)
    summary = trainer.train()
    bare = bare_step_throughput(trainer, args.bare_steps)
    result = {
        "config": args.config, "steps": args.steps, "zero_stage": cfg.parallel.zero_stage,
        "precision": cfg.parallel.precision, "micro_batch_size": cfg.micro_batch_size,
        "global_batch_size": cfg.global_batch_size, "world_size": trainer.world_size,
        "device": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
        "torch": torch.__version__, "peak_matmul_tflops": trainer.peak_flops / 1e12,
        "trainer_tokens_per_s": summary.get("run_tokens_per_s"), "trainer_mfu": summary.get("run_mfu"),
        "trainer_steps_measured": summary.get("run_steps_measured"),
        "bare_tokens_per_s": bare["tokens_per_s"], "bare_mfu": bare["mfu"], "bare_steps": bare["steps"],
        "final_train_loss": summary.get("loss"),
    }
    result["trainer_over_bare"] = (result["trainer_tokens_per_s"] or 0.0) / bare["tokens_per_s"]
    if trainer.rank == 0:
        print(f"\n{'':38}{'real tokens/s':>16}{'MFU':>9}")
        print(f"{'trainer (data, logs, 2 checkpoints)':38}{result['trainer_tokens_per_s']:>16,.0f}"
              f"{100 * result['trainer_mfu']:>8.1f}%")
        print(f"{'bare step (same engine and batches)':38}{bare['tokens_per_s']:>16,.0f}{100 * bare['mfu']:>8.1f}%")
        print(f"trainer / bare = {result['trainer_over_bare']:.3f} (target >= 0.95); peak matmul "
              f"{result['peak_matmul_tflops']:.1f} TFLOP/s on {result['device']}, torch {result['torch']}")
        print("BENCH_TRAINER " + json.dumps(result))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bench_trainer.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
