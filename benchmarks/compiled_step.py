"""The compiled megabert step, checked and timed beside the eager one and Hugging Face + torch.compile.

    python -m benchmarks.compiled_step --json-out compiled_step.json            # one GPU, ~6 minutes on an H200
    python -m benchmarks.compiled_step --tiny --device cpu --json-out out.json  # the same code path, tiny, on a CPU

One process, one device, bf16 autocast with fp32 master weights and torch's fused AdamW, the batches of
benchmarks/common.py ("c4-128", "c4-512"; 30% of real tokens masked) in pinned host memory, copied to the device
in every step. First the checks, then the timings:

Checks (a failed check is reported, and the timings still run):
  * trajectory: 50 steps (--check-steps) of a --check-layers-deep base-width model on c4-128 batches, dropout 0,
    from the same weights: eager fp32 with logits (the reference, TF32 off), eager bf16 with logits, eager bf16
    with the fused loss (mlm_output="loss"), compiled bf16 with the fused loss. Each bf16 run's loss curve and
    weight change (w_50 - w_0) against the reference. A bf16 trajectory drifts from fp32 chaotically, so the loss
    curve's error is the mean over the steps of the relative error (the worst step and the last 10 steps' mean
    are reported, not judged), the weight change's the relative norm of the difference. A run that makes one
    change passes when both errors are within 2x those of the run without it (or a floor): "within bf16
    tolerance", judged as the op tests judge kernels. The fused loss is judged against eager bf16 with logits,
    compilation against eager bf16 with the fused loss, so each check sees one change.
  * fused head: megabert.ops.linear_cross_entropy on a c4-128 micro-batch's masked rows (H x 30528), loss and
    gradients against F.linear + F.cross_entropy in fp32, relative to PyTorch's own bf16 error; peak memory of both.

Systems timed (--systems), each on both distributions for --models base large:
  hf-compile                 Hugging Face BertForMaskedLM, SDPA attention, torch.compile (static shapes): the peer
  megabert-eager             megabert eager, [M, V] logits then cross entropy
  megabert-eager-fused-head  eager, the fused MLM loss (mlm_output="loss")
  megabert-compiled          megabert.model.compile.compile_model (one dynamic-shape graph, forward + loss, the
                             backward through AOTAutograd), fused MLM loss
  megabert-compiled-inductor-ops (optional) compiled with MEGABERT_COMPILE_TRITON_OPS=0: Inductor's code from the
                             GeGLU's reference formula instead of megabert's Triton kernel inside the graph
  hf-eager                   (optional) Hugging Face, SDPA, eager
Per row: median step time (CUDA events) after warm-up, real tokens/s, MFU (megabert.utils.flops, matmul peak
measured at the start), peak memory, the ratio to hf-compile, setup seconds (model build + compile + warm-up),
and from torch.profiler over --profile-steps steps the GPU time per step in GEMMs, attention, other kernels (and
copies) and idle. Rows are run model by model, system by system. A row is skipped (and listed) when the time so
far plus its estimated cost -- the longest row so far of its kind, compiled or eager -- would pass --budget-s, so
the run ends in time. The JSON report (--json-out) is rewritten after the checks and after every row, so a run
killed from outside still leaves what it measured; its "complete" is true once the run has ended.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Optional

import torch

from benchmarks.common import DISTRIBUTIONS, make_mlm_batches, padding_fraction, source_commit
from benchmarks.common import time_steps as common_time_steps
from benchmarks.device_timeline import device_timeline, load_trace
from benchmarks.throughput import BATCH, SIZES, hf_model, megabert_model

from megabert.model.bert import MosaicBertForMaskedLM
from megabert.model.compile import compile_model
from megabert.model.inputs import prepare_inputs
from megabert.ops.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from megabert.utils.flops import measure_matmul_tflops, training_step_flops

DEFAULT_SYSTEMS = ["megabert-eager", "megabert-eager-fused-head", "megabert-compiled", "hf-compile"]
COMPILED_VARIANTS = {"megabert-compiled-inductor-ops": "0"}
"""Optional compiled systems: MEGABERT_COMPILE_TRITON_OPS while each is traced."""
OPTIONAL_SYSTEMS = [*COMPILED_VARIANTS, "hf-eager"]
TINY_SIZES = {"base": dict(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, vocab_size=1536),
              "large": dict(hidden_size=96, num_layers=2, num_heads=2, intermediate_size=192, vocab_size=1536)}
TINY_BATCH = {"c4-128": 4, "c4-512": 2}
VOCAB = 30528


@dataclasses.dataclass
class Row:
    model: str
    dist: str
    system: str
    batch: int
    step_ms: float
    real_tokens_per_s: float
    mfu: float
    peak_gib: float
    setup_s: float
    profile: Optional[dict] = None
    note: str = ""


@dataclasses.dataclass
class Bench:
    """What every row shares: the device, the measured matmul peak, sizes and step counts."""

    device: torch.device
    tiny: bool
    peak_tflops: float
    steps: int
    warmup: int
    profile_steps: int
    compile_backend: str

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def dims(self, size: str) -> dict:
        return TINY_SIZES[size] if self.tiny else SIZES[size]

    def batch_size(self, size: str, dist: str) -> int:
        return TINY_BATCH[dist] if self.tiny else BATCH[(size, dist)]

    def vocab(self, size: str) -> int:
        return self.dims(size).get("vocab_size", VOCAB)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------------
# Steps of each system: a function step(i) that trains on host batch i (pinned), copied to the device inside
# ---------------------------------------------------------------------------------------------------------------


def host_batches(bench: Bench, size: str, dist: str, count: int = 8):
    batches = make_mlm_batches(dist, bench.batch_size(size, dist), count, bench.vocab(size), torch.device("cpu"))
    pin = (lambda t: t.pin_memory()) if bench.cuda else (lambda t: t)
    host = [{"input_ids": pin(b.input_ids), "attention_mask": pin(b.attention_mask), "labels": pin(b.labels)}
            for b in batches]
    return batches, host


def adamw(model: torch.nn.Module, bench: Bench) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=bench.cuda)


def megabert_step(bench: Bench, model, cfg, host, mlm_output: str) -> Callable[[int], None]:
    opt = adamw(model, bench)

    def step(i: int) -> None:
        inputs = prepare_inputs(host[i % len(host)], cfg, bench.device)  # CPU bookkeeping, one pinned copy
        with bench.autocast():
            loss = model(**inputs, mlm_output=mlm_output).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def hf_step(bench: Bench, model, host) -> Callable[[int], None]:
    opt = adamw(model, bench)

    def step(i: int) -> None:
        inputs = {k: v.to(bench.device, non_blocking=True) for k, v in host[i % len(host)].items()}
        with bench.autocast():
            loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


# ---------------------------------------------------------------------------------------------------------------
# Timing and profile
# ---------------------------------------------------------------------------------------------------------------


def time_steps(bench: Bench, step: Callable[[int], None], start: int, iters: int) -> list[float]:
    """Seconds per step: CUDA events around each step on a GPU, wall clock on a CPU."""
    return common_time_steps(step, start, iters, cuda=bench.cuda)


GEMM_MARKERS = ("gemm", "nvjet", "cutlass", "xmma", "cublas", "matmul", "splitk", "triton_tem_")
ATTENTION_MARKERS = ("flash_attn", "flash_fwd", "flash_bwd", "fmha", "attention", "sdpa", "softmax_warp")


def kernel_category(name: str) -> str:
    """'gemm', 'attention' or 'other' for a device activity's name (kernels, copies, memsets)."""
    lowered = name.lower()
    if any(marker in lowered for marker in ATTENTION_MARKERS):
        return "attention"
    if any(marker in lowered for marker in GEMM_MARKERS):
        return "gemm"
    return "other"


def kernel_breakdown(events: list[dict], steps: int) -> dict:
    """GPU milliseconds per step by category, and idle time, from a Chrome trace's events (torch.profiler)."""
    totals = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    kernels = 0
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            totals[kernel_category(str(e.get("name", "")))] += float(e.get("dur", 0.0))
            kernels += e.get("cat") == "kernel"
    timeline = device_timeline(events, attribute=0)
    per_step = lambda us: us / 1e3 / max(steps, 1)
    return {"gemm_ms": per_step(totals["gemm"]), "attention_ms": per_step(totals["attention"]),
            "other_ms": per_step(totals["other"]), "idle_ms": per_step(timeline.idle_us),
            "span_ms": per_step(timeline.span_us), "kernels_per_step": kernels / max(steps, 1)}


def profiled_events(step: Callable[[int], None], start: int, steps: int) -> list[dict]:
    """The Chrome-trace events of torch.profiler over steps start .. start + steps - 1 (CPU and CUDA activity)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            step(start + i)
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        return load_trace(path)


def profile_steps(bench: Bench, step: Callable[[int], None], start: int) -> Optional[dict]:
    """kernel_breakdown over bench.profile_steps steps (GPU only: a CPU has no device timeline)."""
    if not bench.cuda or bench.profile_steps <= 0:
        return None
    return kernel_breakdown(profiled_events(step, start, bench.profile_steps), bench.profile_steps)


def measure(bench: Bench, size: str, dist: str, system: str, step: Callable[[int], None], batches, flops_cfg,
            setup_began: float, warmup: int) -> Row:
    """Warm-up (compiles), then the timed steps and the profile of one system on one distribution."""
    for i in range(warmup):
        step(i)
    bench.sync()
    setup = time.perf_counter() - setup_began
    if bench.cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = statistics.median(time_steps(bench, step, warmup, bench.steps))
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if bench.cuda else float("nan")
    profile = profile_steps(bench, step, warmup + bench.steps)
    real = sum(sum(b.lengths) for b in batches) / len(batches)
    flops = sum(training_step_flops(flops_cfg, b.lengths, b.masked_tokens) for b in batches) / len(batches)
    return Row(size, dist, system, len(batches[0].lengths), seconds * 1e3, real / seconds,
               flops / seconds / (bench.peak_tflops * 1e12), peak, setup, profile)


def compiled_graphs() -> int:
    """Graphs torch.compile made for megabert's forward since the last reset (each recompilation adds one)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(MosaicBertForMaskedLM.forward.__code__))


# ---------------------------------------------------------------------------------------------------------------
# One system over the distributions of one model size
# ---------------------------------------------------------------------------------------------------------------


class Budget:
    """--budget-s: a row starts only when the time so far plus an estimate of its cost fits in the budget. The
    estimate is the longest row so far of the same kind (compiled or eager) and model size, else of the same kind,
    else nothing: a row's cost is its setup (build, compile, warm-up), timed steps and profile."""

    def __init__(self, seconds: float, started: float):
        self.seconds, self.started = seconds, started
        self.longest: dict[tuple[str, str], float] = {}

    @staticmethod
    def kind(system: str) -> str:
        return "compiled" if "compile" in system else "eager"

    def estimate(self, size: str, system: str) -> float:
        kind = self.kind(system)
        same_kind = [s for (_, k), s in self.longest.items() if k == kind]
        return self.longest.get((size, kind), max(same_kind, default=0.0))

    def refuses(self, size: str, system: str) -> Optional[str]:
        """Why a row of `system` must not start now, or None when it fits."""
        elapsed, estimate = time.perf_counter() - self.started, self.estimate(size, system)
        if elapsed + estimate <= self.seconds:
            return None
        return f"budget: {elapsed:.0f} s so far + ~{estimate:.0f} s for the row > {self.seconds:.0f} s"

    def record(self, size: str, system: str, seconds: float) -> None:
        key = (size, self.kind(system))
        self.longest[key] = max(self.longest.get(key, 0.0), seconds)


def run_system(bench: Bench, size: str, system: str, dists: list[str], budget: Budget, shared: dict,
               report: "Report") -> None:
    """Rows of `system` for each distribution, each added to `report` and saved at once; `shared` carries the
    compiled megabert model between the compiled systems of one size (one compilation serves both distributions
    and both ways of running it)."""
    for dist in dists:
        refused = budget.refuses(size, system)
        if refused:
            report.skip(f"{size} {dist} {system} ({refused})")
            continue
        began = time.perf_counter()
        batches, host = host_batches(bench, size, dist)
        warmup = bench.warmup
        if system.startswith("hf"):
            model, flops_cfg = shared.get("hf") or hf_model(size, "sdpa", bench.dims(size))
            model = model.to(bench.device).train()
            if system == "hf-compile" and "hf" not in shared:
                model = torch.compile(model, dynamic=False, backend=bench.compile_backend)  # static, as the peer
            shared["hf"] = (model, flops_cfg)
            step = hf_step(bench, model, host)
        else:
            if system.startswith("megabert-compiled"):
                if system not in shared:
                    torch.manual_seed(0)
                    model, cfg = megabert_model(size, bench.dims(size))
                    shared[system] = (compile_model(model.to(bench.device).train(), backend=bench.compile_backend),
                                      cfg)
                model, cfg = shared[system]
            else:
                torch.manual_seed(0)
                model, cfg = megabert_model(size, bench.dims(size))
                model = model.to(bench.device).train()
            flops_cfg = cfg
            step = megabert_step(bench, model, cfg, host, "logits" if system == "megabert-eager" else "loss")
        try:
            row = measure(bench, size, dist, system, step, batches, flops_cfg, began, warmup)
        except Exception as exc:  # noqa: BLE001 -- one failed row must not take the others with it
            report.skip(f"{size} {dist} {system} (failed: {exc!r})")
            print(f"{size} {dist} {system}: failed: {exc!r}", flush=True)
            continue
        finally:
            budget.record(size, system, time.perf_counter() - began)
        if system.startswith("megabert-compiled"):
            row.note = f"{compiled_graphs()} compiled graph(s) so far"
        report.add_row(row)
        print(f"{size} {dist} {system}: {row.step_ms:.1f} ms, {row.real_tokens_per_s:,.0f} real tok/s, "
              f"MFU {100 * row.mfu:.1f}%, {row.peak_gib:.1f} GiB, setup {row.setup_s:.0f} s {row.note}", flush=True)
        del step
        gc.collect()


# ---------------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------------


def _weight_change(model, initial: dict) -> torch.Tensor:
    return torch.cat([(p.detach().float() - initial[n].float()).flatten() for n, p in model.named_parameters()])


REFERENCE = "eager fp32 (logits)"
LOSS_ERROR_FLOOR = 1e-3
WEIGHT_ERROR_FLOOR = 1e-2


def trajectory_errors(run: tuple[list[float], torch.Tensor], reference: tuple[list[float], torch.Tensor]) -> dict:
    """Errors of a run (its loss per step, its weight change w_n - w_0) against a reference run from the same
    weights on the same batches. A low-precision trajectory drifts from its reference chaotically, step by step,
    so the loss curve is judged by a statistic over all its steps, not by its worst step:
      loss_error           mean over the steps of |loss - ref| / |ref| (the judged one);
      loss_error_max       the worst step (reported only: one step's spike says little);
      tail_loss_error      |mean of the last 10 losses - the reference's| / the reference's (reported only);
      weight_change_error  ||change - ref change|| / ||ref change|| (judged)."""
    (losses, change), (ref_losses, ref_change) = run, reference
    relative = [abs(a - b) / abs(b) for a, b in zip(losses, ref_losses)]
    tail = min(10, len(losses))
    ref_tail = statistics.fmean(ref_losses[-tail:])
    errors = {"loss_error": statistics.fmean(relative), "loss_error_max": max(relative),
              "tail_loss_error": abs(statistics.fmean(losses[-tail:]) - ref_tail) / abs(ref_tail),
              "weight_change_error": ((change.double() - ref_change.double()).norm()
                                      / ref_change.double().norm().clamp_min(1e-30)).item()}
    return {k: v if math.isfinite(v) else float("inf") for k, v in errors.items()}


def within_bf16_tolerance(errors: dict, yardstick: dict, factor: float = 2.0) -> bool:
    """The judged errors (trajectory_errors) of a run are within `factor` x those of a yardstick run of the same
    precision against the same reference, or within a floor: judged as the op tests judge kernels."""
    return (errors["loss_error"] <= max(factor * yardstick["loss_error"], LOSS_ERROR_FLOOR)
            and errors["weight_change_error"] <= max(factor * yardstick["weight_change_error"], WEIGHT_ERROR_FLOOR))


def check_trajectories(bench: Bench, steps: int, layers: int) -> list[dict]:
    """`steps` steps from the same weights on the same batches: eager fp32 with logits (the reference), eager bf16
    with logits, eager bf16 with the fused loss, compiled bf16 with the fused loss. Each bf16 run against the
    reference; each run that makes one change is judged against the run without it, its yardstick: the fused loss
    against eager bf16 with logits, compilation against eager bf16 with the fused loss."""
    dims = dict(bench.dims("base"), num_layers=layers)
    torch.manual_seed(0)
    template, cfg = megabert_model("base", dims, hidden_dropout=0.0)
    template = template.to(bench.device).train()
    initial = {n: p.detach().clone() for n, p in template.named_parameters()}
    _, host = host_batches(bench, "base", "c4-128")
    runs = {}

    def run(label: str, dtype: Optional[torch.dtype], mlm_output: str, compiled: bool = False) -> None:
        model = copy.deepcopy(template)  # the template never trains: every run starts from `initial`
        if compiled:
            model = compile_model(model, backend=bench.compile_backend)
        opt = adamw(model, bench)
        losses = []
        for i in range(steps):
            inputs = prepare_inputs(host[i % len(host)], cfg, bench.device)
            with torch.autocast(bench.device.type, dtype=torch.bfloat16, enabled=dtype is not None):
                loss = model(**inputs, mlm_output=mlm_output).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        runs[label] = (losses, _weight_change(model, initial))

    with full_fp32_matmuls():
        run(REFERENCE, None, "logits")
    run("eager bf16 (logits)", torch.bfloat16, "logits")
    run("eager bf16 (loss)", torch.bfloat16, "loss")
    run("compiled bf16 (loss)", torch.bfloat16, "loss", compiled=True)
    yardsticks = {"eager bf16 (loss)": "eager bf16 (logits)", "compiled bf16 (loss)": "eager bf16 (loss)"}

    checks = []
    for label in runs:
        if label == REFERENCE:
            continue
        errors = trajectory_errors(runs[label], runs[REFERENCE])
        check = {"check": f"{steps}-step trajectory, {label} vs {REFERENCE}", **errors,
                 "final_loss": runs[label][0][-1]}
        yardstick = yardsticks.get(label)
        if yardstick is None:
            check.update(passed=math.isfinite(errors["loss_error"]), criterion="the bf16 yardstick")
        else:
            allowed = trajectory_errors(runs[yardstick], runs[REFERENCE])
            direct = trajectory_errors(runs[label], runs[yardstick])
            check.update(passed=within_bf16_tolerance(errors, allowed), yardstick=yardstick,
                         criterion=f"loss_error, weight_change_error <= 2x the yardstick's (or "
                                   f"{LOSS_ERROR_FLOOR:g}, {WEIGHT_ERROR_FLOOR:g})",
                         yardstick_errors={k: allowed[k] for k in ("loss_error", "weight_change_error")},
                         vs_yardstick={k: direct[k] for k in ("loss_error", "weight_change_error")})
        checks.append(check)
    return checks


class full_fp32_matmuls:
    """TF32 off inside: an fp32 reference must be fp32."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.saved


def check_fused_head(bench: Bench) -> dict:
    """The fused MLM loss against F.linear + F.cross_entropy at the base head's size, fp32 reference."""
    batches = make_mlm_batches("c4-128", bench.batch_size("base", "c4-128"), 1, bench.vocab("base"), "cpu")
    rows, hidden, vocab = batches[0].masked_tokens, bench.dims("base")["hidden_size"], bench.vocab("base")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, hidden, generator=gen).to(bench.device, torch.bfloat16).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen) * 0.05).to(bench.device).requires_grad_()
    b = (torch.randn(vocab, generator=gen) * 0.01).to(bench.device).requires_grad_()
    target = torch.randint(0, vocab, (rows,), generator=gen).to(bench.device)

    def loss_and_grads(fn, x_):
        if bench.cuda:
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if bench.cuda else 0
        loss = fn(x_, w, b, target)
        grads = torch.autograd.grad(loss, (x_, w, b))
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30 if bench.cuda else float("nan")
        return (loss, *grads), peak

    with bench.autocast():
        ours, ours_peak = loss_and_grads(lambda *a: linear_cross_entropy(*a)[0], x)
        lowp, lowp_peak = loss_and_grads(linear_cross_entropy_reference, x)
    with full_fp32_matmuls():
        ref, _ = loss_and_grads(linear_cross_entropy_reference, x.detach().float().requires_grad_())

    def rel(a, r):
        return ((a.double() - r.double()).norm() / r.double().norm().clamp_min(1e-30)).item()

    errors = {name: (rel(a, r), rel(lp, r)) for name, a, lp, r in zip(("loss", "dx", "dweight", "dbias"), ours,
                                                                     lowp, ref)}
    passed = all(e <= max(2 * t, 1e-3) for e, t in errors.values())
    return {"check": f"fused linear + cross entropy, {rows} x {hidden} x {vocab}", "passed": passed,
            "errors_vs_fp32": {k: e for k, (e, _) in errors.items()},
            "torch_bf16_errors_vs_fp32": {k: t for k, (_, t) in errors.items()},
            "peak_gib_fused": ours_peak, "peak_gib_reference": lowp_peak,
            "criterion": "each error <= 2x PyTorch's bf16 error (or 1e-3)"}


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def ratio_to_peer(row: Row, rows: list[Row]) -> Optional[float]:
    peer = next((r for r in rows if (r.model, r.dist, r.system) == (row.model, row.dist, "hf-compile")), None)
    return row.real_tokens_per_s / peer.real_tokens_per_s if peer else None


def markdown(checks: list[dict], rows: list[Row], skipped: list[str], device_label: str) -> str:
    lines = ["### Checks", "", "| check | result | detail |", "|---|---|---|"]
    for c in checks:
        detail = ", ".join(f"{k} {_compact(v)}" for k, v in c.items() if k not in ("check", "passed"))
        lines.append(f"| {c['check']} | {'pass' if c['passed'] else '**FAIL**'} | {detail} |")
    lines += ["", f"### Training step ({device_label}; ratio: real tokens/s vs hf-compile, same model and dist)", "",
              "| model | dist | system | batch | step ms | real tokens/s | MFU | peak GiB | vs hf-compile | setup s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = ratio_to_peer(r, rows)
        lines.append(f"| {r.model} | {r.dist} | {r.system} | {r.batch} | {r.step_ms:.1f} | "
                     f"{r.real_tokens_per_s:,.0f} | {100 * r.mfu:.1f}% | {r.peak_gib:.1f} | "
                     f"{f'{ratio:.2f}x' if ratio else '-'} | {r.setup_s:.0f} |")
    profiled = [r for r in rows if r.profile]
    if profiled:
        lines += ["", "### GPU time per step (torch.profiler)", "",
                  "| model | dist | system | GEMM ms | attention ms | other kernels ms | idle ms | span ms | "
                  "kernels/step |", "|---|---|---|---|---|---|---|---|---|"]
        for r in profiled:
            p = r.profile
            lines.append(f"| {r.model} | {r.dist} | {r.system} | {p['gemm_ms']:.1f} | {p['attention_ms']:.1f} | "
                         f"{p['other_ms']:.1f} | {p['idle_ms']:.1f} | {p['span_ms']:.1f} | "
                         f"{p['kernels_per_step']:.0f} |")
    notes = [f"{r.model} {r.dist} {r.system}: {r.note}" for r in rows if r.note]
    if notes or skipped:
        lines += ["", "Notes: " + "; ".join(notes + [f"skipped {s}" for s in skipped])]
    return "\n".join(lines)


def _compact(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {_compact(v)}" for k, v in value.items()) + "}"
    return str(value)


def environment(bench: Bench) -> dict:
    import platform

    import triton

    return {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "device": device_name(bench),
            "host": platform.node(), "gpu_uuid": gpu_uuid(bench), "commit": source_commit(),
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "matmul_tflops": bench.peak_tflops,
            "padding": {d: padding_fraction(make_mlm_batches(d, 8, 8, 2048, "cpu")) for d in DISTRIBUTIONS}}


def device_name(bench: Bench) -> str:
    return torch.cuda.get_device_name(bench.device) if bench.cuda else "cpu"


def gpu_uuid(bench: Bench) -> Optional[str]:
    """The GPU's UUID: which machine a run used, where host names repeat (containers and VMs often share one)."""
    uuid = getattr(torch.cuda.get_device_properties(bench.device), "uuid", None) if bench.cuda else None
    return str(uuid) if uuid is not None else None


@dataclasses.dataclass
class Report:
    """What the run has found so far, written to --json-out after the checks and after every row (atomically: a
    run killed from outside keeps every finished row); "complete" is true only in the last write."""

    environment: dict
    device_label: str
    started: float
    json_out: Optional[str] = None
    checks: list[dict] = dataclasses.field(default_factory=list)
    rows: list[Row] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    complete: bool = False

    def markdown(self) -> str:
        return markdown(self.checks, self.rows, self.skipped, self.device_label)

    def result(self) -> dict:
        return {"environment": self.environment, "checks": self.checks,
                "rows": [dataclasses.asdict(r) for r in self.rows],
                "ratios_vs_hf_compile": {f"{r.model} {r.dist} {r.system}": ratio_to_peer(r, self.rows)
                                         for r in self.rows},
                "skipped": self.skipped, "complete": self.complete,
                "elapsed_s": time.perf_counter() - self.started, "markdown": self.markdown()}

    def save(self) -> dict:
        result = self.result()
        if self.json_out:
            tmp = f"{self.json_out}.tmp"
            with open(tmp, "w") as f:
                json.dump(result, f, indent=2, default=float)
            os.replace(tmp, self.json_out)
        return result

    def add_row(self, row: Row) -> None:
        self.rows.append(row)
        self.save()

    def skip(self, what: str) -> None:
        self.skipped.append(what)
        self.save()


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["base", "large"], choices=sorted(SIZES))
    parser.add_argument("--dists", nargs="+", default=["c4-128", "c4-512"], choices=sorted(DISTRIBUTIONS))
    parser.add_argument("--systems", nargs="+", default=DEFAULT_SYSTEMS, choices=DEFAULT_SYSTEMS + OPTIONAL_SYSTEMS)
    parser.add_argument("--steps", type=int, default=16, help="timed steps per row (median; two passes over 8 batches)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiled rows compile here)")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--check-steps", type=int, default=50)
    parser.add_argument("--check-layers", type=int, default=2,
                        help="layers of the base-width model of the trajectory check (compile time)")
    parser.add_argument("--no-checks", action="store_true")
    parser.add_argument("--budget-s", type=float, default=390.0,
                        help="skip a row when the time so far plus its estimated cost (the longest row so far of "
                             "its kind) would pass this many seconds")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models and batches (a CPU smoke run)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default inductor; aot_eager with --tiny on a CPU)")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    backend = args.compile_backend or ("aot_eager" if device.type == "cpu" else "inductor")
    peak = (measure_matmul_tflops(device) if device.type == "cuda"
            else measure_matmul_tflops(device, n=512, dtype=torch.bfloat16, warmup=1, iters=5))
    bench = Bench(device, args.tiny, peak, args.steps, args.warmup, args.profile_steps, backend)
    env = environment(bench)
    print(" | ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    report = Report(env, f"{device_name(bench)}, torch {torch.__version__}", started, args.json_out)
    report.save()

    if not args.no_checks:
        for name, check in (("fused head", lambda: check_fused_head(bench)),
                            ("trajectories", lambda: check_trajectories(bench, args.check_steps, args.check_layers))):
            try:
                result = check()
            except Exception as exc:  # noqa: BLE001 -- report it, time the rest
                result = {"check": name, "passed": False, "error": repr(exc)}
            for c in result if isinstance(result, list) else [result]:
                report.checks.append(c)
                print(f"check: {c['check']}: {'pass' if c['passed'] else 'FAIL'} {c}", flush=True)
            report.save()
        torch._dynamo.reset()
        gc.collect()
        if bench.cuda:
            torch.cuda.empty_cache()

    budget = Budget(args.budget_s, started)
    order = [s for s in DEFAULT_SYSTEMS + OPTIONAL_SYSTEMS if s in args.systems]
    for size in args.models:
        shared: dict = {}
        for system in order:
            own_model = system in COMPILED_VARIANTS or system in ("hf-compile", "hf-eager")
            if own_model:
                shared.clear()  # a new model per such system
            saved = os.environ.get("MEGABERT_COMPILE_TRITON_OPS")
            if system in COMPILED_VARIANTS:
                torch._dynamo.reset()  # the kernel choice is made while tracing: trace again
                os.environ["MEGABERT_COMPILE_TRITON_OPS"] = COMPILED_VARIANTS[system]
            try:
                run_system(bench, size, system, args.dists, budget, shared, report)
            finally:
                if saved is None:
                    os.environ.pop("MEGABERT_COMPILE_TRITON_OPS", None)
                else:
                    os.environ["MEGABERT_COMPILE_TRITON_OPS"] = saved
            if own_model:
                shared.clear()
            gc.collect()
            if bench.cuda:
                torch.cuda.empty_cache()
        shared.clear()
        torch._dynamo.reset()

    report.complete = True
    result = report.save()
    print("\n" + result["markdown"], flush=True)
    print(f"elapsed {result['elapsed_s']:.0f} s", flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
