"""How much host time a training step costs, against the device time it has to hide behind.

    python -m benchmarks.host_time --systems megabert-compiled hf-compile --dists c4-128 c4-512
    python -m benchmarks.host_time --tiny --device cpu          # the same code path on a CPU (smoke run)

A step keeps the GPU busy only while the host queues its kernels faster than the GPU runs them. Per system and
distribution (base model, benchmarks.compiled_step's batches and step: bf16 autocast, fused AdamW, batches copied
from pinned memory):
  * host ms per phase -- preparing the inputs, the forward, the backward, the optimizer -- timed after a device sync,
    so nothing waits for the device: what the host spends issuing one step;
  * the wall time of such a step, and of steps run back to back (the device time when the host keeps ahead);
  * torch.profiler's CPU ops by self time over a few steps (--top rows): where the host's time goes.
When the host's total nears the back-to-back step time, a slower or busier host makes the step host-bound.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Optional

import torch

from benchmarks.compiled_step import Bench, hf_step, host_batches, megabert_step
from benchmarks.throughput import hf_model, megabert_model
from megabert.model.compile import compile_model
from megabert.model.inputs import prepare_inputs

SYSTEMS = ("megabert-compiled", "megabert-eager", "hf-compile", "hf-eager")
PHASES = ("inputs", "forward", "backward", "optimizer")


def build(bench: Bench, system: str, host: list[dict]) -> tuple[Callable[[int], None], Callable[[int], dict]]:
    """(step(i), phases(i)): a whole training step on host batch i, and one timed phase by phase (host ms)."""
    torch.manual_seed(0)
    if system.startswith("megabert"):
        model, cfg = megabert_model("base", bench.dims("base"))
        model = model.to(bench.device).train()
        if system == "megabert-compiled":
            model = compile_model(model, backend=bench.compile_backend)
        step = megabert_step(bench, model, cfg, host, "loss")
        inputs_of = lambda i: prepare_inputs(host[i % len(host)], cfg, bench.device)
        loss_of = lambda inputs: model(**inputs, mlm_output="loss").loss
    else:
        model, _ = hf_model("base", "sdpa", bench.dims("base"))
        model = model.to(bench.device).train()
        if system == "hf-compile":
            model = torch.compile(model, dynamic=False, backend=bench.compile_backend)
        step = hf_step(bench, model, host)
        inputs_of = lambda i: {k: v.to(bench.device, non_blocking=True) for k, v in host[i % len(host)].items()}
        loss_of = lambda inputs: model(**inputs).loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=bench.cuda)

    def phases(i: int) -> dict:
        bench.sync()
        marks = [time.perf_counter()]
        inputs = inputs_of(i)
        marks.append(time.perf_counter())
        with bench.autocast():
            loss = loss_of(inputs)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        opt.step()
        opt.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        bench.sync()
        marks.append(time.perf_counter())
        out = {name: 1e3 * (b - a) for name, a, b in zip(PHASES, marks, marks[1:])}
        out["host"] = 1e3 * (marks[4] - marks[0])
        out["wall"] = 1e3 * (marks[5] - marks[0])
        return out

    return step, phases


def measure(bench: Bench, system: str, dist: str, repeats: int, top: int) -> dict:
    """Host ms per phase (median of `repeats` synced steps), the back-to-back step and the profiler's top CPU ops."""
    _, host = host_batches(bench, "base", dist)
    began = time.perf_counter()
    step, phases = build(bench, system, host)
    for i in range(bench.warmup):  # compiles
        step(i)
    bench.sync()
    setup = time.perf_counter() - began
    timed = [phases(i) for i in range(repeats)]
    result = {"system": system, "dist": dist, "setup_s": setup}
    result.update({k: statistics.median(t[k] for t in timed) for k in timed[0]})
    bench.sync()
    began = time.perf_counter()
    for i in range(bench.steps):
        step(i)
    queued = time.perf_counter()
    bench.sync()
    result["back_to_back_ms"] = 1e3 * (time.perf_counter() - began) / bench.steps
    result["queue_ms"] = 1e3 * (queued - began) / bench.steps  # the host's pace, once the device queue is full
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(3):
            step(i)
        bench.sync()
    result["top_cpu_ops"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top,
                                                      max_name_column_width=70)
    return result


def line(r: dict) -> str:
    return (f"{r['system']} {r['dist']}: host ms, synced: " + ", ".join(f"{p} {r[p]:.2f}" for p in PHASES)
            + f" = {r['host']:.1f} | wall of that step {r['wall']:.1f} | back to back "
            f"{r['back_to_back_ms']:.1f} ms/step (host queued {r['queue_ms']:.1f}) | setup {r['setup_s']:.0f} s")


def main(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=["megabert-compiled", "hf-compile"])
    parser.add_argument("--dists", nargs="+", choices=["c4-128", "c4-512"], default=["c4-128"])
    parser.add_argument("--repeats", type=int, default=10, help="synced steps timed phase by phase (median)")
    parser.add_argument("--steps", type=int, default=16, help="steps back to back")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (compiled systems compile here)")
    parser.add_argument("--top", type=int, default=25, help="rows of the profiler's CPU-op table")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and batches (a CPU smoke run)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    bench = Bench(device, args.tiny, 1.0, args.steps, args.warmup, 0, backend)
    results = []
    for system in args.systems:
        for dist in args.dists:
            result = measure(bench, system, dist, args.repeats, args.top)
            print(line(result), flush=True)
            print(result["top_cpu_ops"], flush=True)
            results.append(result)
    return results


if __name__ == "__main__":
    main()
