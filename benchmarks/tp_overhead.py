"""Overhead of the tensor-parallel code path at TP = 1: parallelize_model(model, 1-rank groups) vs the plain model.

Both models (same seed, same weights) train side by side in one process on one device: forward, backward and a
fused AdamW step, bf16 autocast over fp32 weights, MosaicBERT masking (30%, sparse MLM head). Steps alternate in
rounds (plain, TP, plain, TP, ...) so clock and thermal drift hit both alike; each step is timed with CUDA events
after a warm-up, and the medians are compared. Target: TP-path overhead < 2%.

    python -m benchmarks.tp_overhead                       # megabert-base, batch 128 x seq 128, on the GPU
    python -m benchmarks.tp_overhead --tiny --steps 2 --warmup 1 --rounds 1 --device cpu   # smoke test on CPU

Batches ("c4-128"-like, fixed seed): 70% of sequences fill seq_len, the rest are uniform in [seq_len / 4,
seq_len], about 10% padding overall.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from pathlib import Path


import torch
import torch.distributed as dist

from megabert.config import ModelConfig
from megabert.model.bert import IGNORE_INDEX, MosaicBertForMaskedLM
from megabert.parallel.groups import ParallelGroups
from megabert.parallel.parallelize import parallelize_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model instead of megabert-base")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--mask-prob", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=20, help="timed steps per model per round")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per model before timing")
    p.add_argument("--rounds", type=int, default=5, help="alternations plain/TP (each times --steps steps)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--attention-backend", default="auto")
    p.add_argument("--no-autocast", action="store_true", help="fp32 instead of bf16 autocast")
    p.add_argument("--compile", action="store_true", help="wrap both models in torch.compile")
    p.add_argument("--json-out", help="also write the result as JSON here")
    return p.parse_args(argv)


def model_config(args: argparse.Namespace) -> ModelConfig:
    if args.tiny:
        return ModelConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                           attention_backend=args.attention_backend)
    return ModelConfig(attention_backend=args.attention_backend)  # the defaults are megabert-base


def make_batches(cfg: ModelConfig, args: argparse.Namespace, count: int, device: torch.device) -> list[dict]:
    g = torch.Generator().manual_seed(1234)
    batches = []
    for _ in range(count):
        b, s = args.batch_size, args.seq_len
        full = torch.rand(b, generator=g) < 0.7
        lengths = torch.where(full, torch.full((b,), s), torch.randint(s // 4, s + 1, (b,), generator=g))
        mask = (torch.arange(s)[None, :] < lengths[:, None]).long()  # [B, S]
        ids = torch.randint(1000 if cfg.vocab_size > 1000 else 1, cfg.vocab_size, (b, s), generator=g) * mask
        masked = (torch.rand(b, s, generator=g) < args.mask_prob) & mask.bool()
        labels = torch.where(masked, ids, torch.full_like(ids, IGNORE_INDEX))
        batches.append({k: v.to(device) for k, v in
                        dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                             labels=labels).items()})
    return batches


class Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed_ms(self, begin) -> float:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return begin.elapsed_time(end)
        return (time.perf_counter() - begin) * 1e3


def init_single_rank_group() -> None:
    """A 1-rank gloo group on localhost: TP = 1 never communicates, so the backend does not matter."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    init_single_rank_group()
    groups = ParallelGroups(1)
    cfg = model_config(args)

    torch.manual_seed(0)
    plain = MosaicBertForMaskedLM(cfg).to(device)
    torch.manual_seed(0)
    tp = parallelize_model(MosaicBertForMaskedLM(cfg), groups).to(device)
    fused = device.type == "cuda"
    models = {"plain": plain, "tp1": tp}
    if args.compile:
        models = {k: torch.compile(m) for k, m in models.items()}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=fused) for k, m in models.items()}
    batches = make_batches(cfg, args, 8, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.no_autocast)

    def step(name: str, batch: dict) -> torch.Tensor:
        with autocast:
            loss = models[name](**batch).loss
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)
        return loss.detach()

    first = {}
    with torch.no_grad(), autocast:  # the two paths compute the same function (compared without dropout)
        for name, m in models.items():
            first[name] = m.eval()(**batches[0]).loss.float().item()
            m.train()

    timer = Timer(device)
    times: dict[str, list[float]] = {k: [] for k in models}
    peak_mib: dict[str, float] = {}
    for name in models:
        for i in range(args.warmup):
            step(name, batches[i % len(batches)])
    for _ in range(args.rounds):
        for name in models:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for i in range(args.steps):
                begin = timer.start()
                step(name, batches[i % len(batches)])
                times[name].append(timer.elapsed_ms(begin))
            if device.type == "cuda":
                peak_mib[name] = max(peak_mib.get(name, 0.0), torch.cuda.max_memory_allocated() / 2 ** 20)

    real_tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": "tiny" if args.tiny else "megabert-base",
        "batch": f"{args.batch_size}x{args.seq_len}", "mask_prob": args.mask_prob,
        "precision": "fp32" if args.no_autocast else "bf16 autocast",
        "compiled": args.compile,
        "attention_backend": args.attention_backend,
        "steps_timed_per_model": args.steps * args.rounds,
        "median_step_ms": median,
        "real_tokens_per_s": {k: real_tokens / (v / 1e3) for k, v in median.items()},
        "peak_memory_mib": peak_mib,
        "first_loss": first,
        "tp_overhead_percent": 100.0 * (median["tp1"] / median["plain"] - 1.0),
    }
    print(f"{result['model']} on {result['device']}, batch {result['batch']}, {result['precision']}, "
          f"{'torch.compile, ' if args.compile else ''}"
          f"{result['steps_timed_per_model']} timed steps per model")
    for name in models:
        print(f"  {name:6s} median step {median[name]:8.2f} ms  {result['real_tokens_per_s'][name]:12.0f} real tok/s"
              + (f"  peak {peak_mib[name]:.0f} MiB" if peak_mib else ""))
    print(f"  first-batch loss: plain {first['plain']:.5f}, tp1 {first['tp1']:.5f}")
    print(f"  TP code path overhead at TP=1: {result['tp_overhead_percent']:+.2f}% (target < 2%)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    groups.destroy()
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
