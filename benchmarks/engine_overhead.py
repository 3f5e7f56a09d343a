#!/usr/bin/env python3
"""What does the DeepSpeed engine cost per step? The plain step and engine steps under candidate configs, side by
side in one process, on the same batches, interleaved in rounds.

    python -m benchmarks.engine_overhead --json-out runs/engine_overhead.json            # one GPU, configs/base.json
    torchrun --nproc_per_node 8 -m benchmarks.engine_overhead --json-out runs/engine_overhead_8.json
    python -m benchmarks.engine_overhead --tiny --steps 2 --rounds 2 --warmup 1           # CPU (gloo), a tiny model

Every variant trains its own copy of the model from the same initial weights on the same global batches
(benchmarks/common.py's c4-128 lengths, micro-batch 256 x 128, 4 micro-batches = the trainer's global batch 1024
on one GPU), each micro-batch staged in pinned host memory and copied to the device as the trainer does it:
  plain      megabert + torch fused AdamW (megabert.train.optimizer.build_optimizer), fp32 master weights, bf16
             autocast, gradient accumulation, clipping, the trainer's non-finite flag; no engine (torch DDP, no_sync
             until the last micro-batch, on several ranks)
  zeroN ...  the DeepSpeed engine from megabert.parallel.deepspeed_config.build_deepspeed_config: today's config,
             today's + the throughput-timer switch, every neutral engine switch that applies ("neutral"), neutral
             less one switch at a time (what that switch gives), neutral + the non-neutral overflow-scan switch;
             for ZeRO-1 also neutral + DeepSpeed's one fp32-accumulation route (BF16_Optimizer, measurement only:
             its checkpoints are not ZeRO checkpoints)
Rounds: every variant runs --steps optimizer steps, then the next, the order rotating from round to round, so a
machine drifting over the call falls on all alike; each round's block of a variant sees the same batches as the
other variants' blocks of that round. Per variant: step ms (median over rounds), host ms (time to issue a step:
equal to step ms where the step waits for the device), real tokens/s (all ranks), the ratio to the plain step
(median step times, and the geometric mean of the per-round ratios with its standard error), memory (what the
variant holds between steps plus its peak within a step, rank 0), and the loss trajectory: each variant's mean
loss per step against the plain step's (bf16 tolerance, --loss-rtol) and against its stage's "today" (the
switches change no arithmetic: equal on CPU, within run-to-run noise on a GPU). With --profile, torch.profiler
counts kernel launches and device synchronisations per step for each variant.

A markdown table is printed; --json-out writes everything. Exit status 1 when a loss check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from benchmarks.common import make_mlm_batches
from benchmarks.trainer_ratio import paired_ratio
from megabert.config import ModelConfig, OptimConfig, ParallelConfig, ScheduleConfig, load_config
from megabert.parallel.deepspeed_config import (ENGINE_SWITCHES, NEUTRAL_SWITCHES, applicable_switches,
                                                build_deepspeed_config)
from megabert.utils.distributed import discover_env, init_distributed

TINY_MODEL = dict(vocab_size=2048, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
SYNC_CALLS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize")
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


@dataclasses.dataclass
class Variant:
    name: str
    zero_stage: Optional[int]  # None: the plain step
    switches: tuple[str, ...] = ()
    extra: dict = dataclasses.field(default_factory=dict)  # raw DeepSpeed keys (measurement-only variants)
    note: str = ""


@dataclasses.dataclass
class Setup:
    model: ModelConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    device: torch.device
    rank: int
    world: int
    micro: int
    accum: int
    seed: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def engine_config(setup: Setup, variant: Variant) -> dict[str, Any]:
    ds = build_deepspeed_config(ParallelConfig(zero_stage=variant.zero_stage, precision="bf16"), setup.optim,
                                setup.micro * setup.accum * setup.world, setup.micro, setup.world,
                                on_gpu=setup.cuda, switches=variant.switches)
    for key, value in variant.extra.items():  # measurement-only keys, past merge_extra's ownership rules
        ds[key] = {**ds.get(key, {}), **value} if isinstance(value, dict) else value
    return ds


def candidate_variants(setup: Setup, stages: list[int]) -> list[Variant]:
    """The plain step, then per ZeRO stage: today, today + timer switch, neutral, neutral less each switch,
    neutral + the overflow-scan switch, and (ZeRO-1) BF16_Optimizer; a variant whose generated config equals an
    earlier one's is left out."""
    variants = [Variant("plain", None, note="torch fused AdamW, no engine")]
    for stage in stages:
        neutral = applicable_switches(NEUTRAL_SWITCHES, stage, setup.world, setup.cuda, "bf16")
        scan = applicable_switches(["bf16_no_overflow_scan"], stage, setup.world, setup.cuda, "bf16")
        candidates = [Variant(f"zero{stage} today", stage, note="today's generated config"),
                      Variant(f"zero{stage} today + no_throughput_timer", stage, ("no_throughput_timer",)),
                      Variant(f"zero{stage} neutral", stage, tuple(neutral), note=" + ".join(neutral))]
        if len(neutral) > 1:
            candidates += [Variant(f"zero{stage} neutral - {name}", stage, tuple(n for n in neutral if n != name))
                           for name in neutral]
        if scan:
            candidates.append(Variant(f"zero{stage} neutral + {scan[0]}", stage, tuple(neutral + scan),
                                      note="not neutral: " + ENGINE_SWITCHES[scan[0]].caveat))
        if stage == 1:
            candidates.append(Variant("zero1 neutral + fp32 accumulation (BF16_Optimizer)", 1, tuple(neutral),
                                      extra={"data_types": {"grad_accum_dtype": "fp32"}},
                                      note="measurement only: zero_to_fp32 cannot read its checkpoints"))
        seen = {json.dumps(engine_config(setup, v), sort_keys=True) for v in variants if v.zero_stage is not None}
        for v in candidates:
            key = json.dumps(engine_config(setup, v), sort_keys=True)
            if key not in seen:
                seen.add(key)
                variants.append(v)
    return variants


class Bookkeeping:
    """The trainer's per-step loss and non-finite protocol: losses summed on the device, a non-finite flag
    all-reduced across ranks and handed to the fused optimizer, which skips on the device. Nothing syncs."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.losses: list[torch.Tensor] = []  # mean loss of each step, on the device

    def start(self) -> None:
        self.loss_sum = torch.zeros((), device=self.setup.device)
        self.finite = torch.zeros((), device=self.setup.device)

    def add(self, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach())
        self.loss_sum += torch.where(finite, loss.detach().float(), 0.0)
        self.finite += finite.float()

    def finish(self, optimizer) -> None:
        flag = (self.setup.accum - self.finite).reshape(1)
        if self.setup.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        optimizer.nonfinite = (flag[0] > 0).float()
        self.losses.append(self.loss_sum / self.setup.accum)


class Runner:
    """One variant: its own model from the shared initial weights, its optimizer, schedule and step."""

    def __init__(self, setup: Setup, variant: Variant):
        from megabert.model.bert import MosaicBertForMaskedLM
        from megabert.train.optimizer import build_optimizer, build_scheduler

        self.setup, self.variant, self.book = setup, variant, Bookkeeping(setup)
        self.steps_done = 0
        torch.manual_seed(setup.seed)  # the same initial weights for every variant
        model = MosaicBertForMaskedLM(setup.model).to(setup.device).train()
        self.optimizer = build_optimizer(model, setup.optim)
        self.scheduler = build_scheduler(self.optimizer, setup.schedule)
        self.engine = self.ddp = None
        if variant.zero_stage is None:
            self.model = model
            if setup.world > 1:
                self.ddp = torch.nn.parallel.DistributedDataParallel(
                    model, device_ids=[setup.device.index] if setup.cuda else None, gradient_as_bucket_view=True)
                if setup.cuda:  # DeepSpeed reduces bf16 gradients: so does the plain step
                    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
                    self.ddp.register_comm_hook(None, bf16_compress_hook)
            self.params = [p for p in model.parameters() if p.requires_grad]
            self._step = self._plain_step
        else:
            from megabert.parallel.deepspeed_config import initialize

            self.ds_config = engine_config(setup, variant)
            self.engine = initialize(model, self.optimizer, self.scheduler, self.ds_config)
            self._step = self._engine_step
            self.wrapper = type(self.engine.optimizer).__name__

    def step(self, micro_batches: list) -> None:
        # The same dropout masks for every variant at the same step, different ones on every rank.
        torch.manual_seed(self.setup.seed * 1_000_003 + 7919 * self.setup.rank + self.steps_done)
        self.book.start()
        self._step(micro_batches)
        self.optimizer.nonfinite = None
        self.steps_done += 1

    def _plain_step(self, micro_batches: list) -> None:
        setup, last = self.setup, len(micro_batches) - 1
        forward = self.ddp or self.model
        for i, staged in enumerate(micro_batches):
            inputs = staged.to(setup.device)
            sync = self.ddp.no_sync() if self.ddp is not None and i < last else contextlib.nullcontext()
            with sync:
                with torch.autocast(setup.device.type, dtype=torch.bfloat16):
                    loss = forward(**inputs).loss
                (loss / setup.accum).backward()
            self.book.add(loss)
            if i == last:
                self.book.finish(self.optimizer)
        if setup.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, setup.optim.grad_clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def _engine_step(self, micro_batches: list) -> None:
        engine, last = self.engine, len(micro_batches) - 1
        for i, staged in enumerate(micro_batches):
            loss = engine(**staged.to(self.setup.device)).loss
            engine.backward(loss)
            self.book.add(loss)
            if i == last:
                self.book.finish(self.optimizer)
            engine.step()

    def losses(self) -> list[float]:
        return torch.stack(self.book.losses).tolist() if self.book.losses else []

    def close(self) -> None:
        if self.engine is not None:
            self.engine.destroy()


# ------------------------------------------------------------------------------------------------- measuring


def _sync(setup: Setup) -> None:
    if setup.cuda:
        torch.cuda.synchronize(setup.device)
    if setup.world > 1:
        dist.barrier()


def time_block(setup: Setup, runner: Runner, batches: list[list], first: int, steps: int) -> dict[str, float]:
    """`steps` optimizer steps on global batches first.. : wall seconds (device drained at both ends), the host's
    issue seconds (until the last step returned) and the peak memory above the block's start (bytes, rank 0)."""
    _sync(setup)
    if setup.cuda:
        torch.cuda.reset_peak_memory_stats(setup.device)
        start_bytes = torch.cuda.memory_allocated(setup.device)
    start = time.perf_counter()
    for k in range(first, first + steps):
        runner.step(batches[k])
    issued = time.perf_counter()
    _sync(setup)
    end = time.perf_counter()
    peak = torch.cuda.max_memory_allocated(setup.device) - start_bytes if setup.cuda else 0
    return {"seconds": end - start, "host_seconds": issued - start, "peak_bytes": float(peak)}


def profile_steps(setup: Setup, runner: Runner, batches: list[list], first: int, steps: int) -> dict[str, float]:
    """Kernel launches, device synchronisations and device time per step from torch.profiler (CPU: ops only)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.cuda else [])
    _sync(setup)
    with profile(activities=activities) as prof:
        for k in range(first, first + steps):
            runner.step(batches[k % len(batches)])
        _sync(setup)
    table = prof.key_averages()
    count = lambda names: sum(e.count for e in table if e.key in names)
    device_us = sum(e.self_device_time_total for e in table if e.device_type == DeviceType.CUDA)  # kernels once
    ops = sum(e.count for e in table if e.key.startswith("aten::"))
    syncs = max(0, count(SYNC_CALLS) - (1 if setup.cuda else 0))  # less the drain at the end of the trace
    return {"launches_per_step": count(LAUNCH_CALLS) / steps, "syncs_per_step": syncs / steps,
            "aten_ops_per_step": ops / steps, "device_ms_per_step": device_us / 1e3 / steps}


def staged_global_batches(setup: Setup, count: int) -> tuple[list[list], list[int]]:
    """`count` global batches of this rank ([step][micro-batch] PackedInputs, pinned on a GPU) and the real tokens
    of each, summed over ranks."""
    from megabert.model.inputs import pack_inputs

    micro = make_mlm_batches("c4-128", setup.micro, count * setup.accum, setup.model.vocab_size,
                             torch.device("cpu"), seed=setup.seed + 101 * setup.rank)
    staged = [pack_inputs({"input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": b.labels},
                           setup.model, pin=setup.cuda) for b in micro]
    tokens = torch.tensor([sum(sum(b.lengths) for b in micro[k * setup.accum:(k + 1) * setup.accum])
                           for k in range(count)], dtype=torch.float64)
    if setup.world > 1:
        on_device = tokens.to(setup.device)
        dist.all_reduce(on_device)
        tokens = on_device.cpu()
    return [staged[k * setup.accum:(k + 1) * setup.accum] for k in range(count)], [int(t) for t in tokens]


def max_relative_difference(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)), default=0.0)


def run(args: argparse.Namespace) -> dict:
    env = discover_env()
    device_choice = "cpu" if args.tiny and args.device == "auto" else args.device
    if device_choice == "cpu" or not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
    device = init_distributed(env, "auto", device_choice)
    cfg = load_config(args.config, validate=False)
    model_cfg = ModelConfig(**{**dataclasses.asdict(cfg.model), **(TINY_MODEL if args.tiny else {})})
    micro = args.micro_batch_size or (4 if args.tiny else 256)
    total_steps = args.warmup + args.rounds * args.steps
    # The recipe's lr with a warm-up over the first quarter of the steps, so the loss moves within the run.
    schedule = ScheduleConfig(total_steps=total_steps, warmup_fraction=0.25, final_lr_fraction=0.1)
    setup = Setup(model_cfg, cfg.optim, schedule, device, env.rank, env.world_size, micro, args.accum, cfg.seed)
    batches, tokens = staged_global_batches(setup, total_steps)

    variants = candidate_variants(setup, args.zero_stages)
    if args.variants:
        variants = [v for v in variants if v.name == "plain" or any(v.name.startswith(p) for p in args.variants)]
    runners: list[Runner] = []
    persistent: dict[str, float] = {}
    for v in variants:  # built and warmed up one after another: each one's own memory is the difference
        _sync(setup)
        before = torch.cuda.memory_allocated(device) if setup.cuda else 0
        runner = Runner(setup, v)
        for k in range(args.warmup):
            runner.step(batches[k])
        _sync(setup)
        persistent[v.name] = float(torch.cuda.memory_allocated(device) - before) if setup.cuda else 0.0
        runners.append(runner)

    blocks: dict[str, list[dict]] = {v.name: [] for v in variants}
    for r in range(args.rounds):
        order = runners[r % len(runners):] + runners[:r % len(runners)]
        for runner in order:
            blocks[runner.variant.name].append(time_block(setup, runner, batches, args.warmup + r * args.steps,
                                                          args.steps))
    losses = {runner.variant.name: runner.losses() for runner in runners}  # the warm-up and timed steps
    profiles = {}
    if args.profile:
        for runner in runners:
            profiles[runner.variant.name] = profile_steps(setup, runner, batches, args.warmup, args.profile)

    result = report(args, setup, variants, runners, blocks, tokens, persistent, profiles, losses)
    for runner in runners:
        runner.close()
    return result


def report(args, setup: Setup, variants: list[Variant], runners: list[Runner], blocks: dict[str, list[dict]],
           tokens: list[int], persistent: dict[str, float], profiles: dict, losses: dict[str, list[float]]) -> dict:
    block_tokens = [sum(tokens[args.warmup + r * args.steps:args.warmup + (r + 1) * args.steps])
                    for r in range(args.rounds)]
    plain = blocks["plain"]
    rows = []
    for runner in runners:
        v, own = runner.variant, blocks[runner.variant.name]
        step_s = statistics.median(b["seconds"] for b in own) / args.steps
        host_s = statistics.median(b["host_seconds"] for b in own) / args.steps
        row = {"variant": v.name, "zero_stage": v.zero_stage, "switches": list(v.switches), "note": v.note,
               "optimizer_wrapper": getattr(runner, "wrapper", None),
               "deepspeed_config": getattr(runner, "ds_config", None),
               "step_ms": 1e3 * step_s, "host_ms": 1e3 * host_s,
               "step_ms_rounds": [1e3 * b["seconds"] / args.steps for b in own],
               "real_tokens_per_s": statistics.median(t / b["seconds"] for t, b in zip(block_tokens, own)),
               "ratio_to_plain": statistics.median(b["seconds"] for b in plain) / statistics.median(
                   b["seconds"] for b in own),
               "persistent_gib": persistent[v.name] / 2 ** 30,
               "step_peak_gib": max(b["peak_bytes"] for b in own) / 2 ** 30}
        if v.name != "plain" and args.rounds >= 2:
            row["paired_ratio_to_plain"] = paired_ratio([(t / b["seconds"], t / p["seconds"])
                                                          for t, b, p in zip(block_tokens, own, plain)])
        row["loss_vs_plain"] = max_relative_difference(losses[v.name], losses["plain"])
        today = f"zero{v.zero_stage} today"
        if v.zero_stage is not None and today in losses:
            row["loss_vs_today"] = max_relative_difference(losses[v.name], losses[today])
        row.update(profiles.get(v.name, {}))
        rows.append(row)
    failed = [r["variant"] for r in rows if r["loss_vs_plain"] > args.loss_rtol]
    import deepspeed

    result = {
        "bench": "engine_overhead", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(setup.device) if setup.cuda else "cpu", "world_size": setup.world,
        "torch": torch.__version__, "deepspeed": deepspeed.__version__, "config": args.config, "tiny": args.tiny,
        "model": dataclasses.asdict(setup.model), "micro_batch_size": setup.micro, "accum": setup.accum,
        "global_batch_size": setup.micro * setup.accum * setup.world, "steps_per_round": args.steps,
        "rounds": args.rounds, "warmup": args.warmup, "real_tokens_per_step": statistics.mean(tokens),
        "loss_rtol": args.loss_rtol, "loss_check_passed": not failed, "loss_check_failed": failed,
        "losses": losses, "variants": rows,
    }
    if setup.rank == 0:
        print(markdown_table(result))
        if failed:
            print(f"LOSS CHECK FAILED (relative difference to the plain step > {args.loss_rtol}): {failed}")
        brief = [{k: v for k, v in row.items() if k != "deepspeed_config"} for row in rows]
        print("ENGINE_OVERHEAD " + json.dumps({**{k: v for k, v in result.items() if k != "losses"},
                                               "variants": brief}))
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def markdown_table(result: dict) -> str:
    profiled = any("launches_per_step" in r for r in result["variants"])
    head = ("| variant | wrapper | step ms | host ms | real tokens/s | vs plain | paired vs plain | GiB held + "
            "step peak | loss vs plain | loss vs today |" + (" ops | launches | syncs | device ms |" if profiled else ""))
    lines = [f"{result['device']} x {result['world_size']}, torch {result['torch']}, DeepSpeed {result['deepspeed']},"
             f" micro-batch {result['micro_batch_size']} x {result['accum']} accumulation per rank, "
             f"{result['rounds']} rounds x {result['steps_per_round']} steps", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in result["variants"]:
        paired = r.get("paired_ratio_to_plain")
        line = (f"| {r['variant']} | {r['optimizer_wrapper'] or '-'} | {r['step_ms']:.1f} | {r['host_ms']:.1f} | "
                f"{r['real_tokens_per_s']:,.0f} | {r['ratio_to_plain']:.3f} | "
                + (f"{paired['ratio']:.3f} +- {paired['se']:.3f}" if paired else "-")
                + f" | {r['persistent_gib']:.2f} + {r['step_peak_gib']:.2f} | {r['loss_vs_plain']:.1e} | "
                + (f"{r['loss_vs_today']:.1e}" if "loss_vs_today" in r else "-") + " |")
        if profiled:
            line += (f" {r.get('aten_ops_per_step', 0):.0f} | {r.get('launches_per_step', 0):.0f} | "
                     f"{r.get('syncs_per_step', 0):.1f} | "
f"{r.get('device_ms_per_step', 0):.1f} |")
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/base.json", help="model sizes, optimizer and seed from this config")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model, on the CPU (gloo) unless --device cuda: a "
                   "smoke run")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--zero-stages", type=int, nargs="+", default=[1, 2], choices=[0, 1, 2, 3])
    p.add_argument("--variants", nargs="+", metavar="PREFIX", help="time only these variants (name prefixes; the "
                   "plain step always)")
    p.add_argument("--micro-batch-size", type=int, help="sequences per micro-batch (default 256; 4 with --tiny)")
    p.add_argument("--accum", type=int, default=4, help="micro-batches per optimizer step (default 4)")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per variant per round (default 4)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (default 3; DeepSpeed's "
                   "throughput timer starts syncing at its third step)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS", help="also profile STEPS steps per variant")
    p.add_argument("--loss-rtol", type=float, default=2e-2, help="largest relative difference of a variant's loss "
                   "to the plain step's at any step (default 2e-2, bf16)")
    p.add_argument("--json-out", help="write the results (and every variant's losses) here")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("accum", "steps", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    result = run(parse_args(argv))
    if not result["loss_check_passed"]:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
