"""Where a megabert training step spends GPU time: the step timed, then its kernels by GPU time per step.

    python -m benchmarks.step_profile [--model base] [--dists c4-128 c4-512] [--rows 30] \
        [--systems megabert-eager megabert-eager-fused-head megabert-compiled] [--json-out kernels.json]

The step is benchmarks/compiled_step.py's for each system (pinned host batches, prepare_inputs, bf16 autocast,
fused AdamW); one compiled model serves every distribution (dynamic shapes). Per (system, dist): the median step
time (CUDA events), then torch.profiler over --steps steps: the kernels grouped by name, longest first, with their
calls and milliseconds per step and their category (GEMM / attention / other), and the GEMM / attention / other /
idle split of benchmarks.compiled_step.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict

import torch
from benchmarks.common import environment_line, time_steps
from benchmarks.compiled_step import (Bench, host_batches, kernel_breakdown, kernel_category, megabert_step,
                                      profiled_events)
from benchmarks.throughput import SIZES, megabert_model

from megabert.model.compile import compile_model
from megabert.utils.flops import measure_matmul_tflops

SYSTEMS = ["megabert-eager", "megabert-eager-fused-head", "megabert-compiled"]


def kernel_table(events: list[dict], steps: int) -> list[dict]:
    """Device activities of a trace grouped by name: calls and milliseconds per step, longest first."""
    total_us, calls = defaultdict(float), defaultdict(int)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            name = str(e.get("name", ""))
            total_us[name] += float(e.get("dur", 0.0))
            calls[name] += 1
    rows = [{"name": name, "category": kernel_category(name), "ms_per_step": us / 1e3 / steps,
             "calls_per_step": calls[name] / steps} for name, us in total_us.items()]
    return sorted(rows, key=lambda r: -r["ms_per_step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="base", choices=sorted(SIZES))
    parser.add_argument("--dists", nargs="+", default=["c4-128"], choices=["c4-128", "c4-512"])
    parser.add_argument("--systems", nargs="+", default=["megabert-compiled"], choices=SYSTEMS)
    parser.add_argument("--steps", type=int, default=4, help="profiled steps")
    parser.add_argument("--timed-steps", type=int, default=20, help="timed steps (median) before the profile")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    print(environment_line())
    bench = Bench(torch.device("cuda"), False, measure_matmul_tflops(), 0, 0, args.steps, "inductor")
    report = []
    for system in args.systems:
        torch.manual_seed(0)
        model, cfg = megabert_model(args.model)
        model = model.cuda().train()
        if system == "megabert-compiled":
            model = compile_model(model)
        for dist in args.dists:
            _, host = host_batches(bench, args.model, dist)
            step = megabert_step(bench, model, cfg, host, "logits" if system == "megabert-eager" else "loss")
            warmup = 4
            for i in range(warmup):
                step(i)
            torch.cuda.synchronize()
            step_ms = 1e3 * statistics.median(time_steps(step, warmup, args.timed_steps))
            events = profiled_events(step, warmup + args.timed_steps, args.steps)
            kernels, split = kernel_table(events, args.steps), kernel_breakdown(events, args.steps)
            report.append({"model": args.model, "dist": dist, "system": system, "step_ms": step_ms,
                           "split": split, "kernels": kernels})
            print(f"\n== {args.model} {dist} {system}: median step {step_ms:.2f} ms; per step: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in split.items()))
            print(f"{'ms/step':>8} {'calls':>6} {'cat':>9}  kernel")
            for r in kernels[:args.rows]:
                print(f"{r['ms_per_step']:8.3f} {r['calls_per_step']:6.0f} {r['category']:>9}  {r['name'][:110]}")
            del step
        del model
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"environment": environment_line(), "rows": report}, f, indent=1)


if __name__ == "__main__":
    main()
