"""Where a megabert training step spends GPU time: torch.profiler over a few steps, top kernels by CUDA time.

    python -m benchmarks.step_profile [--model base] [--dist c4-128] [--rows 25]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import environment_line, make_mlm_batches
from benchmarks.throughput import BATCH, megabert_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="base", choices=["base", "large"])
    parser.add_argument("--dist", default="c4-128", choices=["c4-128", "c4-512"])
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    print(environment_line())
    model, _ = megabert_model(args.model)
    model = model.cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batches = make_mlm_batches(args.dist, BATCH[(args.model, args.dist)], 4, 30528, torch.device("cuda"))

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(4):
        step(i)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(4):
            step(i)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
