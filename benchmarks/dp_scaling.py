"""Data-parallel weak scaling through the trainer's own DeepSpeed engine: real tokens/s on N GPUs vs on one.

One launch measures one world size, for each ZeRO stage asked for; launch it once per GPU count and let the
summary divide:

    torchrun --nproc_per_node 1 benchmarks/dp_scaling.py --config configs/base.json --json-out dp.jsonl
    torchrun --nproc_per_node 8 benchmarks/dp_scaling.py --config configs/base.json --json-out dp.jsonl
    python -m benchmarks.dp_scaling --summarize dp.jsonl        # efficiency = tokens/s(N) / (N x tokens/s(1))

Weak scaling: the per-GPU micro-batch (--micro-batch-size, default the config's) and the accumulation steps
(--accum, default 1) are fixed, so global_batch_size = micro x data-parallel size x accum grows with N. The
engine is built exactly as training builds it (`Trainer(cfg).setup()`: model, data, decoupled AdamW, schedule,
DeepSpeed JSON from the config), then `engine_step_seconds` from benchmarks/trainer.py times whole optimizer
steps on the trainer's own first global batch kept on the device (no data loading, logging or checkpoints):
warm-up excluded, device synchronised around the timed steps, the median of --rounds rounds. Real (non-pad)
tokens are counted on every rank and summed, so tokens/s is the whole job's. Peak memory is rank 0's
torch.cuda.max_memory_allocated over the timed steps (model, optimizer state and activations).

Rank 0 prints one `BENCH_DP {json}` line per ZeRO stage and appends it to --json-out (JSON lines). Extra
`--section.key value` arguments override the config; on CPU (gloo, DeepSpeed's CPU accelerator):

    torchrun --nproc_per_node 2 benchmarks/dp_scaling.py --config configs/tiny.json --micro-batch-size 4 \\
        --steps 2 --rounds 1 --warmup 1 --parallel.device cpu
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import torch
import torch.distributed as dist

from benchmarks.trainer import engine_step_seconds, ensure_sample_data
from megabert.config import TrainConfig, apply_overrides, load_config
from megabert.ops.attention import resolve_backend
from megabert.train import metrics as M
from megabert.train.trainer import Trainer
from megabert.utils.distributed import barrier, discover_env, init_distributed


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Other --section.key value "
                                "arguments override the config.")
    p.add_argument("--config", help="training config, e.g. configs/base.json")
    p.add_argument("--zero-stages", type=int, nargs="+", default=[1, 2], choices=[0, 1, 2, 3])
    p.add_argument("--micro-batch-size", type=int, help="sequences per GPU per micro-step (default: the config's)")
    p.add_argument("--accum", type=int, default=1, help="micro-steps per optimizer step (default 1)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds; the median is reported (default 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before the first round (default 3)")
    p.add_argument("--json-out", help="rank 0 appends one JSON line per ZeRO stage here")
    p.add_argument("--summarize", metavar="JSONL", help="print the scaling table of a --json-out file and exit")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, overrides = p.parse_known_args(argv)
    if args.summarize is None and args.config is None:
        p.error("--config is required (or --summarize FILE)")
    for name in ("accum", "steps", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args, overrides


def stage_config(args: argparse.Namespace, overrides: list[str], zero_stage: int, world_size: int) -> TrainConfig:
    """The config for one measurement: the user's config, weak-scaling batch, no resume, no eval, own output."""
    cfg = load_config(args.config, validate=False)
    apply_overrides(cfg, overrides)  # first, so that parallel.tensor_parallel_size and the device are known
    micro = args.micro_batch_size or cfg.micro_batch_size
    dp = world_size // cfg.parallel.tensor_parallel_size
    out = f"runs/bench_dp_scaling/{Path(args.config).stem}_n{world_size}_zero{zero_stage}"
    apply_overrides(cfg, [
        ("parallel.zero_stage", str(zero_stage)), ("micro_batch_size", str(micro)),
        ("global_batch_size", str(micro * dp * args.accum)),
        ("schedule.total_steps", str(args.warmup + args.rounds * (args.steps + 1))),
        ("output_dir", out), ("checkpoint.dir", f"{out}/checkpoints"), ("checkpoint.resume", "none"),
        ("logging.eval_interval", "0"), ("logging.tensorboard", "false")])
    apply_overrides(cfg, overrides)  # again: an explicit user override wins over the weak-scaling defaults
    cfg.validate()
    return cfg


def global_batch_counts(trainer: Trainer) -> tuple[float, float]:
    """(real tokens, useful FLOPs) of one global batch over every rank: the batch engine_step_seconds replays
    (each rank's first `accum` micro-batches), counted on the host and summed (tensor-parallel ranks share one)."""
    source = trainer.data.train_batches(consumed_samples=0)
    local = torch.zeros(2, dtype=torch.float64)
    for _ in range(trainer.accum):
        counts = M.batch_counts(next(source), trainer.cfg.model.sparse_mlm_head)
        local += torch.tensor([counts["real_tokens"], M.training_flops(trainer.cfg.model, counts)],
                              dtype=torch.float64)
    if trainer.world_size > 1:
        on_device = local.to(trainer.device)
        dist.all_reduce(on_device)
        local = on_device.cpu()
    tp = trainer.cfg.parallel.tensor_parallel_size
    return local[0].item() / tp, local[1].item() / tp


def measure(cfg: TrainConfig, args: argparse.Namespace) -> dict:
    """Builds the trainer's engine for `cfg`, times it, tears it down; returns the result (same on every rank)."""
    cuda = cfg.parallel.device != "cpu" and torch.cuda.is_available()
    left_over = torch.cuda.memory_allocated() / 2 ** 20 if cuda else None  # by an earlier stage: should be ~0
    trainer = Trainer(cfg)
    trainer.setup()
    try:
        tokens, flops = global_batch_counts(trainer)
        if cuda:
            torch.cuda.synchronize(trainer.device)
            torch.cuda.reset_peak_memory_stats(trainer.device)
        step_seconds = [engine_step_seconds(trainer, args.steps, warmup=args.warmup if i == 0 else 1)
                         for i in range(args.rounds)]
        median_step = statistics.median(step_seconds)
        import deepspeed

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.parallel.precision, torch.float32)
        heads = cfg.model.num_heads
        query = torch.empty(1, heads, cfg.model.hidden_size // heads, device=trainer.device, dtype=dtype)  # [T, h, d]
        backend = resolve_backend(cfg.model.attention_backend, query)
        return {
            "bench": "dp_scaling", "config": args.config, "world_size": trainer.world_size,
            "data_parallel_size": trainer.dp_size, "tensor_parallel_size": cfg.parallel.tensor_parallel_size,
            "zero_stage": cfg.parallel.zero_stage, "precision": cfg.parallel.precision,
            "seq_len": cfg.data.seq_len, "micro_batch_size": cfg.micro_batch_size, "accum": trainer.accum,
            "global_batch_size": cfg.global_batch_size, "hidden_size": cfg.model.hidden_size,
            "num_layers": cfg.model.num_layers, "attention_backend": backend,
            "real_tokens_per_step": tokens,
            "median_step_ms": 1e3 * median_step, "step_ms_rounds": [1e3 * s for s in step_seconds],
            "real_tokens_per_s": tokens / median_step,
            "real_tokens_per_s_per_gpu": tokens / median_step / trainer.world_size,
            "mfu": flops / median_step / (trainer.telemetry.peak_flops * trainer.world_size),
            "peak_matmul_tflops": trainer.telemetry.peak_flops / 1e12,
            "peak_memory_mib": torch.cuda.max_memory_allocated(trainer.device) / 2 ** 20 if cuda else None,
            "memory_before_setup_mib": left_over,
            "steps_per_round": args.steps, "rounds": args.rounds, "warmup": args.warmup,
            "device": torch.cuda.get_device_name(trainer.device) if cuda else "cpu",
            "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
    finally:
        trainer.writer.close()
        trainer.engine.destroy()  # ZeRO's hooks and buffers go, so the next stage starts from an empty device
        del trainer
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def run(args: argparse.Namespace, overrides: list[str]) -> list[dict]:
    env = discover_env()
    first = stage_config(args, overrides, args.zero_stages[0], env.world_size)
    # The process group first (the trainer adopts it), so that one rank preprocesses the sample corpus.
    init_distributed(env, first.parallel.backend, first.parallel.device)
    if env.rank == 0:
        ensure_sample_data(first)
    barrier()
    results = []
    for stage in args.zero_stages:
        result = measure(stage_config(args, overrides, stage, env.world_size), args)
        results.append(result)
        if env.rank == 0:
            print("BENCH_DP " + json.dumps(result), flush=True)
            if args.json_out:
                Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
                with open(args.json_out, "a") as f:
                    f.write(json.dumps(result) + "\n")
    barrier()
    return results


# ---------------------------------------------------------------------------------------------------- summary


def scaling_table(records: list[dict]) -> str:
    """Markdown table: per (config, ZeRO stage, micro x accum) and world size, tokens/s and efficiency against the
    one-GPU record of the same group (the latest record wins when a measurement was repeated)."""
    latest: dict[tuple, dict] = {}
    for r in records:
        group = (r["config"], r["zero_stage"], r["precision"], r["seq_len"], r["micro_batch_size"], r["accum"],
                 r.get("tensor_parallel_size", 1))
        latest[group + (r["world_size"],)] = r
    lines = ["| config | ZeRO | GPUs | micro x accum | global batch | step ms | real tokens/s | per GPU "
             "| efficiency | MFU | peak MiB (rank 0) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(latest):
        r, one = latest[key], latest.get(key[:-1] + (1,))
        efficiency = (f"{100 * r['real_tokens_per_s'] / (r['world_size'] * one['real_tokens_per_s']):.1f}%"
                      if one else "n/a (no 1-GPU run)")
        memory = f"{r['peak_memory_mib']:,.0f}" if r.get("peak_memory_mib") else "-"
        lines.append(f"| {Path(r['config']).name} | {r['zero_stage']} | {r['world_size']} | "
                     f"{r['micro_batch_size']} x {r['accum']} | {r['global_batch_size']} | {r['median_step_ms']:.1f} | "
                     f"{r['real_tokens_per_s']:,.0f} | {r['real_tokens_per_s_per_gpu']:,.0f} | {efficiency} | "
                     f"{100 * r['mfu']:.1f}% | {memory} |")
    return "\n".join(lines)


def read_records(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> list[dict]:
    args, overrides = parse_args(argv)
    if args.summarize:
        records = read_records(args.summarize)
        print(scaling_table(records))
        return records
    return run(args, overrides)


if __name__ == "__main__":
    main()
