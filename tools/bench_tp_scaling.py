#!/usr/bin/env python
"""Tensor-parallel scaling on one multi-GPU node: tokens/s per GPU at TP = 1, 2, 4, 8 (x DP to fill the node).

    torchrun --nproc_per_node 8 tools/bench_tp_scaling.py --model large --tp 1 2 4 8 --check

For each TP size the same world is split into TP groups (consecutive ranks) and DP replicas; each replica
trains on batch_per_gpu x TP sequences per step, so every GPU has the same work at every TP and ideal scaling is
a flat tokens/s per GPU. Gradients are averaged over the DP group by DistributedDataParallel (no DeepSpeed
needed). bf16 autocast, fused AdamW, CUDA events, median over timed steps after warm-up.

--check first verifies, in fp32 with TF32 off, that each TP size's loss and (all-gathered) gradients equal the
unsharded model's on the same batch: the CPU tests' equivalence check, on NCCL.

On CPU (gloo) it runs as a smoke test:
    torchrun --nproc_per_node 2 tools/bench_tp_scaling.py --tiny --device cpu --tp 1 2 --steps 2 --warmup 1 --check
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megabert.config import ModelConfig  # noqa: E402
from megabert.model.bert import IGNORE_INDEX, MosaicBertForMaskedLM  # noqa: E402
from megabert.parallel.groups import ParallelGroups  # noqa: E402
from megabert.parallel.parallelize import parallelize_model  # noqa: E402
from megabert.parallel.tp_checkpoint import gather_full_tensors  # noqa: E402

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
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--attention-backend", default="auto")
    p.add_argument("--check", action="store_true", help="verify TP == unsharded (fp32) before timing")
    p.add_argument("--json-out", help="rank 0 writes the results here")
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


def time_training(cfg: ModelConfig, groups: ParallelGroups, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = parallelize_model(MosaicBertForMaskedLM(cfg).to(device), groups)
    if groups.dp_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, process_group=groups.dp_group)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    per_replica = args.batch_per_gpu * groups.tp_size
    batches = [batch(cfg, per_replica, args.seq_len, seed=100 * groups.dp_rank + i, device=device) for i in range(4)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    cuda = device.type == "cuda"
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.steps):
        dist.barrier()
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        else:
            start = time.perf_counter()
        with autocast:
            loss = model(**batches[i % len(batches)]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
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
    real_tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
    world = dist.get_world_size()
    return {"tp": groups.tp_size, "dp": groups.dp_size, "sequences_per_replica": per_replica,
            "median_step_ms": step_ms.item(),
            "real_tokens_per_s_per_gpu": real_tokens * groups.dp_size / (step_ms.item() / 1e3) / world,
            "peak_memory_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None,
            "last_loss": loss.item()}


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    cfg = ModelConfig(**PRESETS["tiny" if args.tiny else args.model], attention_backend=args.attention_backend)
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
        result.update(time_training(cfg, groups, args, device))
        groups.destroy()
        results.append(result)
        if rank == 0:
            check = (f"  check: loss rel err {result['loss_rel_err']:.1e}, grad max rel err "
                     f"{result['grad_max_rel_err']:.1e}" if args.check else "")
            memory = f"  peak {result['peak_memory_mib']:.0f} MiB" if result["peak_memory_mib"] else ""
            print(f"TP={tp} DP={result['dp']}: step {result['median_step_ms']:.2f} ms, "
                  f"{result['real_tokens_per_s_per_gpu']:.0f} real tokens/s/GPU{memory}{check}", flush=True)
    if rank == 0 and args.json_out:
        meta = {"model": "tiny" if args.tiny else args.model, "world_size": world, "seq_len": args.seq_len,
                "batch_per_gpu": args.batch_per_gpu, "torch": torch.__version__,
                "device": torch.cuda.get_device_name() if use_cuda else "cpu"}
        Path(args.json_out).write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    dist.destroy_process_group()
    return results


if __name__ == "__main__":
    main()
