"""Tensor-parallel scaling on one multi-GPU node: tokens/s, memory and the first losses at TP = 1, 2, 4, 8.

    torchrun --nproc_per_node 8 benchmarks/tp_scaling.py --model large --tp 1 2 4 8 --check \
        --data-config configs/large.json --json-out tp.json
    python -m benchmarks.tp_scaling --summarize tp.json          # the table again, from the JSON

For each TP size the same world is split into TP groups (consecutive ranks) and DP replicas. Every TP size
trains on the same global batches (batch_per_gpu x world sequences per step; replica r takes its slice, so each
GPU has the same work at every TP and ideal scaling is a flat tokens/s per GPU) from the same initial weights,
with a token-weighted loss (each replica's mean scaled by its share of the masked tokens), so that every TP x DP
split optimises exactly the same objective. Dropout is off by default (--dropout): with it the TP sizes would
draw different masks. The bf16 losses of the first --loss-steps steps must then agree across TP sizes to bf16
rounding; the largest relative difference to TP = 1 is reported against --loss-rtol.

Batches: with --data-config, MLM batches (real masking) from that training config's data section, e.g. the
bundled sample corpus; otherwise synthetic c4-128-like batches. Gradients are averaged over the DP group by
DistributedDataParallel (no DeepSpeed needed). bf16 autocast with fp32 weights, fused AdamW at a constant --lr,
CUDA events, median over the timed steps after warm-up; peak memory is torch.cuda.max_memory_allocated.

--check first verifies, in fp32 with TF32 off, that each TP size's loss and (all-gathered) gradients equal the
unsharded model's on the same batch: the CPU tests' equivalence check, on NCCL.

On CPU (gloo) it runs as a smoke test:
    torchrun --nproc_per_node 2 benchmarks/tp_scaling.py --tiny --device cpu --tp 1 2 --steps 2 --warmup 1 --check
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path


import torch
import torch.distributed as dist

from megabert.config import ModelConfig, load_config
from megabert.model.bert import IGNORE_INDEX, MosaicBertForMaskedLM
from megabert.model.inputs import prepare_inputs
from megabert.parallel.groups import ParallelGroups
from megabert.parallel.parallelize import parallelize_model
from megabert.checkpoint.tensor_parallel import gather_full_tensors

PRESETS = {
    "base": dict(),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
    "wide": dict(hidden_size=2048, num_layers=24, num_heads=32, intermediate_size=8192),
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=8, intermediate_size=128),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="large", choices=sorted(PRESETS))
    p.add_argument("--tiny", action="store_true", help="same as --model tiny")
    p.add_argument("--tp", type=int, nargs="+", default=[1, 2, 4, 8], help="TP sizes (those dividing the world)")
    p.add_argument("--batch-per-gpu", type=int, default=32, help="sequences per GPU per step")
    p.add_argument("--seq-len", type=int, default=128, help="synthetic batches' length (--data-config sets its own)")
    p.add_argument("--data-config", help="a training config whose data section supplies the batches "
                   "(e.g. configs/large.json: the sample corpus); default: synthetic batches")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4, help="constant AdamW learning rate")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="hidden dropout (default 0: the TP sizes compute the same function, so losses compare)")
    p.add_argument("--loss-steps", type=int, default=10, help="steps whose global loss is recorded (default 10)")
    p.add_argument("--loss-rtol", type=float, default=1e-2,
                   help="largest relative loss difference to TP = 1 accepted as bf16 rounding (default 1e-2)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--attention-backend", default="auto")
    p.add_argument("--check", action="store_true", help="verify TP == unsharded (fp32) before timing")
    p.add_argument("--json-out", help="rank 0 writes the results here")
    p.add_argument("--summarize", metavar="JSON", help="print the tables of a --json-out file and exit")
    return p.parse_args(argv)


def batch(cfg: ModelConfig, size: int, seq: int, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """c4-128-like: 70% full-length sequences, the rest uniform in [seq/4, seq]; 30% of real tokens masked."""
    g = torch.Generator().manual_seed(seed)
    full = torch.rand(size, generator=g) < 0.7
    lengths = torch.where(full, torch.full((size,), seq), torch.randint(seq // 4, seq + 1, (size,), generator=g))
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()  # [B, S]
    ids = torch.randint(1, cfg.vocab_size, (size, seq), generator=g) * mask
    labels = torch.where((torch.rand(size, seq, generator=g) < 0.3) & mask.bool(), ids,
                         torch.full_like(ids, IGNORE_INDEX))
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, labels=labels).items()}


def check_equivalence(cfg: ModelConfig, groups: ParallelGroups, device: torch.device) -> dict:
    """fp32 loss and gradients of the TP model vs the unsharded model on one batch (max relative errors)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    full = MosaicBertForMaskedLM(cfg).to(device).eval()
    sharded = parallelize_model(copy.deepcopy(full), groups).eval()
    data = batch(cfg, 4, 64, seed=7, device=device)
    loss_full, loss_tp = full(**data).loss, sharded(**data).loss
    loss_full.backward()
    loss_tp.backward()
    grads = gather_full_tensors({k: p.grad for k, p in sharded.named_parameters()}, groups.tp_group, cfg.mlp_type)
    worst = max(((grads[k] - p.grad.cpu()).abs().max() / p.grad.abs().max().clamp_min(1e-12)).item()
                for k, p in full.named_parameters())
    return {"loss_rel_err": abs(loss_tp.item() - loss_full.item()) / abs(loss_full.item()),
            "grad_max_rel_err": worst}


def global_batches(args: argparse.Namespace, cfg: ModelConfig, count: int, world: int) -> list[dict]:
    """`count` global batches (CPU tensors [batch_per_gpu x world, S]), the same for every TP size."""
    size = args.batch_per_gpu * world
    if not args.data_config:
        return [batch(cfg, size, args.seq_len, seed=1000 + i, device=torch.device("cpu")) for i in range(count)]
    from megabert.data import build_mlm_data

    data_cfg = load_config(args.data_config, validate=False).data
    if dist.get_rank() != 0:  # rank 0 builds (and caches) the sample index first; the others read the cache
        dist.barrier()
    data = build_mlm_data(data_cfg, seed=0, micro_batch_size=size, train_samples=size * count)
    if dist.get_rank() == 0:
        dist.barrier()
    if data.tokenizer.vocab_size > cfg.vocab_size:
        raise SystemExit(f"the tokenizer of {args.data_config} has {data.tokenizer.vocab_size} tokens, more than "
                         f"the {args.model} model's vocabulary ({cfg.vocab_size}); pick a larger --model")
    source = data.train_batches()
    return [next(source) for _ in range(count)]


def time_training(cfg: ModelConfig, groups: ParallelGroups, args: argparse.Namespace, device: torch.device,
                  batches: list[dict]) -> dict:
    """Trains from seed-0 weights on `batches` (one global batch per step); times steps after the warm-up and
    records the global loss of the first args.loss_steps steps."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = parallelize_model(MosaicBertForMaskedLM(cfg).to(device), groups)
    if groups.dp_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, process_group=groups.dp_group)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=cuda)
    per_replica = args.batch_per_gpu * groups.tp_size
    rows = slice(groups.dp_rank * per_replica, (groups.dp_rank + 1) * per_replica)  # this replica's sequences
    steps = []  # (inputs on the device, this replica's share of the global batch's masked tokens)
    for global_batch in batches:
        local = {k: v[rows] for k, v in global_batch.items()}  # [per_replica, S]
        share = int((local["labels"] != IGNORE_INDEX).sum()) / int((global_batch["labels"] != IGNORE_INDEX).sum())
        steps.append((prepare_inputs(local, cfg, device), share))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    times, losses = [], []
    for i, (inputs, share) in enumerate(steps[:args.warmup + args.steps]):
        dist.barrier()
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        else:
            start = time.perf_counter()
        with autocast:
            loss = model(**inputs).loss
        # DDP averages over the DP replicas: scaled by dp x share, the gradient is that of the mean over every
        # masked token of the global batch, whatever the TP x DP split.
        (loss * (share * groups.dp_size)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i < args.loss_steps:
            global_loss = loss.detach().float() * share
            if groups.dp_size > 1:
                dist.all_reduce(global_loss, group=groups.dp_group)
            losses.append(global_loss)
        if cuda:
            end.record()
            end.synchronize()
            elapsed = begin.elapsed_time(end)
        else:
            elapsed = (time.perf_counter() - start) * 1e3
        if i >= args.warmup:
            times.append(elapsed)
    step_ms = torch.tensor([statistics.median(times)], dtype=torch.float64, device=device)
    dist.all_reduce(step_ms, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
    timed = batches[args.warmup:args.warmup + args.steps]
    real_tokens = statistics.mean(int(b["attention_mask"].sum()) for b in timed)  # per global batch
    tokens_per_s = real_tokens / (step_ms.item() / 1e3)
    world = dist.get_world_size()
    return {"tp": groups.tp_size, "dp": groups.dp_size, "sequences_per_replica": per_replica,
            "global_batch": len(batches[0]["input_ids"]), "median_step_ms": step_ms.item(),
            "real_tokens_per_s": tokens_per_s, "real_tokens_per_s_per_gpu": tokens_per_s / world,
            "peak_memory_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None,
            "losses": torch.stack(losses).tolist() if losses else []}


def compare_losses(results: list[dict]) -> None:
    """Adds each result's largest relative loss difference to TP = 1 over the recorded steps."""
    reference = next((r["losses"] for r in results if r["tp"] == 1), None)
    for r in results:
        if reference is not None and r["losses"]:
            n = min(len(reference), len(r["losses"]))
            r["loss_max_rel_diff_vs_tp1"] = max(abs(a - b) / abs(b) for a, b in zip(r["losses"][:n], reference[:n]))


def report_tables(report: dict) -> str:
    """Throughput/memory table and first-losses table of one run (the --json-out document)."""
    results = report["results"]
    base = next((r for r in results if r["tp"] == 1), None)
    lines = [f"{report['model']} on {report['world_size']} x {report['device']}: global batch "
             f"{report['batch_per_gpu'] * report['world_size']} sequences of {report['seq_len']} "
             f"({report.get('data', 'synthetic')}), bf16 autocast, torch {report['torch']}",
             "| TP | DP | step ms | real tokens/s | per GPU | per GPU vs TP=1 | peak MiB | fp32 check loss / grad |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        relative = f"{r['real_tokens_per_s_per_gpu'] / base['real_tokens_per_s_per_gpu']:.2f}x" if base else "-"
        memory = f"{r['peak_memory_mib']:,.0f}" if r.get("peak_memory_mib") else "-"
        check = (f"{r['loss_rel_err']:.1e} / {r['grad_max_rel_err']:.1e}" if "loss_rel_err" in r else "-")
        lines.append(f"| {r['tp']} | {r['dp']} | {r['median_step_ms']:.2f} | {r['real_tokens_per_s']:,.0f} | "
                     f"{r['real_tokens_per_s_per_gpu']:,.0f} | {relative} | {memory} | {check} |")
    steps = max((len(r["losses"]) for r in results), default=0)
    if steps:
        lines += ["", "bf16 global loss per step (same initial weights and batches):",
                  "| step | " + " | ".join(f"TP={r['tp']}" for r in results) + " |",
                  "|---|" + "---|" * len(results)]
        for i in range(steps):
            cells = [f"{r['losses'][i]:.4f}" if i < len(r["losses"]) else "-" for r in results]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
        rtol = report.get("loss_rtol", 1e-2)
        for r in results:
            if r["tp"] != 1 and "loss_max_rel_diff_vs_tp1" in r:
                diff = r["loss_max_rel_diff_vs_tp1"]
                verdict = "within" if diff <= rtol else "EXCEEDS"
                lines.append(f"TP={r['tp']} vs TP=1: largest relative loss difference {diff:.2e} ({verdict} "
                             f"the bf16 tolerance {rtol:g})")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.summarize:
        report = json.loads(Path(args.summarize).read_text())
        print(report_tables(report))
        return report["results"]
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    cfg = ModelConfig(**PRESETS["tiny" if args.tiny else args.model], attention_backend=args.attention_backend,
                      hidden_dropout=args.dropout)
    batches = global_batches(args, cfg, args.warmup + args.steps, world)
    seq_len = batches[0]["input_ids"].shape[1]
    results = []
    for tp in args.tp:
        if world % tp:
            if rank == 0:
                print(f"skipping TP = {tp}: world size {world} is not a multiple")
            continue
        groups = ParallelGroups.from_config(tp, cfg)
        result = {}
        if args.check:
            result.update(check_equivalence(cfg, groups, device))
        result.update(time_training(cfg, groups, args, device, batches))
        groups.destroy()
        results.append(result)
        if rank == 0:
            check = (f"  check: loss rel err {result['loss_rel_err']:.1e}, grad max rel err "
                     f"{result['grad_max_rel_err']:.1e}" if args.check else "")
            memory = f"  peak {result['peak_memory_mib']:.0f} MiB" if result["peak_memory_mib"] else ""
            print(f"TP={tp} DP={result['dp']}: step {result['median_step_ms']:.2f} ms, "
                  f"{result['real_tokens_per_s']:.0f} real tokens/s ({result['real_tokens_per_s_per_gpu']:.0f} "
                  f"per GPU){memory}{check}", flush=True)
    compare_losses(results)
    report = {"model": "tiny" if args.tiny else args.model, "world_size": world, "seq_len": seq_len,
              "batch_per_gpu": args.batch_per_gpu, "data": args.data_config or "synthetic", "lr": args.lr,
              "dropout": args.dropout, "loss_rtol": args.loss_rtol, "warmup": args.warmup, "steps": args.steps,
              "torch": torch.__version__, "device": torch.cuda.get_device_name() if use_cuda else "cpu",
              "results": results}
    if rank == 0:
        print(report_tables(report), flush=True)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    dist.destroy_process_group()
    return results


if __name__ == "__main__":
    main()
