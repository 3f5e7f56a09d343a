"""Where a megabert training step spends GPU time: torch.profiler over a few steps, top kernels by CUDA time.

    python -m benchmarks.step_profile [--model base] [--dist c4-128] [--rows 25] \
        [--system megabert-eager|megabert-eager-fused-head|megabert-compiled]

The step is benchmarks/compiled_step.py's for that system (pinned host batches, prepare_inputs, bf16 autocast,
fused AdamW); the table is torch.profiler's, then the GEMM / attention / other / idle split.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import environment_line
from benchmarks.compiled_step import Bench, host_batches, kernel_breakdown, megabert_step
from benchmarks.device_timeline import load_trace
from benchmarks.throughput import SIZES, megabert_model

from megabert.model.compile import compile_model
from megabert.utils.flops import measure_matmul_tflops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="base", choices=sorted(SIZES))
    parser.add_argument("--dist", default="c4-128", choices=["c4-128", "c4-512"])
    parser.add_argument("--system", default="megabert-eager",
                        choices=["megabert-eager", "megabert-eager-fused-head", "megabert-compiled"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    print(environment_line())
    bench = Bench(torch.device("cuda"), False, measure_matmul_tflops(), 0, 0, args.steps, "inductor")
    torch.manual_seed(0)
    model, cfg = megabert_model(args.model)
    model = model.cuda().train()
    if args.system == "megabert-compiled":
        model = compile_model(model)
    _, host = host_batches(bench, args.model, args.dist)
    step = megabert_step(bench, model, cfg, host, "logits" if args.system == "megabert-eager" else "loss")
    warmup = 4
    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(args.steps):
            step(warmup + i)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        split = kernel_breakdown(load_trace(path), args.steps)
    print("per step: " + ", ".join(f"{k} {v:.2f}" for k, v in split.items()))


if __name__ == "__main__":
    main()
