"""Masked batches per second from the megabert loader (CPU-bound: tokens from the memory map, then masking).

    python -m benchmarks.dataloader --data-path data/sample/c4_sample_text_document \\
        --vocab-file data/sample/vocab.txt --seq-len 128 --micro-batch 256

Runs each configuration (sample mode x whole-word masking x DataLoader workers) for --seconds after a warm-up
and prints samples/s and tokens/s of the batches a training loop receives (median of 5 timed windows).
Target: >= 20,000 samples/s at seq_len 128 from one loader process (num_workers 0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


import torch

from megabert.config import DataConfig
from megabert.data import build_mlm_data


def measure(cfg: DataConfig, micro: int, seconds: float, warmup: int = 3) -> dict:
    data = build_mlm_data(cfg, seed=17, micro_batch_size=micro)
    it = data.train_batches(0)
    for _ in range(warmup):
        next(it)
    rates, tokens, total = [], 0, 0
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            batch = next(it)
            n += batch["input_ids"].shape[0]
            tokens += int(batch["attention_mask"].sum())
        rates.append(n / (time.perf_counter() - start))
        total += n
    samples = statistics.median(rates)
    return {"samples_per_s": round(samples), "real_tokens_per_sample": round(tokens / total, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="data/sample/c4_sample_text_document")
    p.add_argument("--vocab-file", default="data/sample/vocab.txt")
    p.add_argument("--tokenizer-type", default="BertWordPieceLowerCase")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=256)
    p.add_argument("--modes", nargs="+", default=["document", "packed"])
    p.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per configuration")
    p.add_argument("--json", default=None, help="also write results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, seq_len {args.seq_len}, micro-batch {args.micro_batch}")
    print(f"{'mode':<9} {'whole-word':<10} {'workers':>7} {'samples/s':>10} {'tokens/s':>11} {'real tok/sample':>15}")
    results = []
    for mode in args.modes:
        for wwm in (False, True):
            for workers in args.workers:
                cfg = DataConfig(data_path=[args.data_path], vocab_file=args.vocab_file,
                                 tokenizer_type=args.tokenizer_type, seq_len=args.seq_len, sample_mode=mode,
                                 whole_word_masking=wwm, num_workers=workers)
                r = measure(cfg, args.micro_batch, args.seconds)
                r.update(mode=mode, whole_word=wwm, workers=workers)
                results.append(r)
                print(f"{mode:<9} {str(wwm):<10} {workers:>7} {r['samples_per_s']:>10,} "
                      f"{r['samples_per_s'] * args.seq_len:>11,} {r['real_tokens_per_sample']:>15}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
