"""Training-step throughput: megabert vs Hugging Face BertForMaskedLM, plus a MosaicBERT ablation table.

    python -m benchmarks.throughput --models base --dists c4-128 c4-512 \
        --systems megabert hf-sdpa hf-eager hf-compile [--ablation] [--steps 20]

One process, one GPU, bf16 autocast with fp32 master weights, a full step: forward, MLM loss, backward,
AdamW (fused). Batches come from the fixed-seed "c4-128" / "c4-512" length distributions (benchmarks/common.py),
30% of real tokens masked, the same batches for every system. Per row: median step time (CUDA events, after
warm-up), tokens/s (padded B x S), real tokens/s, peak memory, and MFU = useful FLOPs / step time / the bf16
matmul rate measured at the start of this run (megabert.utils.flops; the same formula for every system, for its
own architecture: a GeLU BERT has fewer matmul parameters than a GeGLU one).
"megabert-compile" is the whole forward + loss as one torch.compile graph (megabert.model.compile.compile_model,
dynamic shapes) with the fused MLM loss (mlm_output="loss"); benchmarks/compiled_step.py times it beside the eager
modes, with checks and profiles.
Hugging Face models use attention dropout 0.0 like MosaicBERT (hidden dropout 0.1 for both), so all systems
compute the same kind of step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
from typing import Callable, Optional

import torch

from benchmarks.common import (DISTRIBUTIONS, environment_line, make_mlm_batches, median, padding_fraction,
                          time_cuda)

from megabert.config import ModelConfig
from megabert.model.bert import MosaicBertForMaskedLM
from megabert.model.compile import compile_model as compile_megabert
from megabert.model.inputs import prepare_inputs
from megabert.ops.attention import resolve_backend
from megabert.utils.flops import measure_matmul_tflops, training_step_flops

SIZES = {
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
}
BATCH = {("base", "c4-128"): 256, ("base", "c4-512"): 64, ("large", "c4-128"): 128, ("large", "c4-512"): 32}

# Ablation: (label, ModelConfig overrides, environment overrides). Each switches one thing off.
ABLATIONS = [
    ("all on", {}, {}),
    ("learned positions (no ALiBi)", {"position_embedding": "learned"}, {}),
    ("GeLU MLP (no GeGLU)", {"mlp_type": "gelu"}, {}),
    ("padded (no unpadding)", {"unpad": False}, {}),
    ("fp32 LayerNorm", {"low_precision_layernorm": False}, {}),
    ("dense MLM head", {"sparse_mlm_head": False}, {}),
    ("no fused GeGLU/add+LN", {}, {"MEGABERT_FUSED_OPS": "0"}),
    ("SDPA attention (no Triton)", {"attention_backend": "sdpa"}, {}),
]


@dataclasses.dataclass
class Result:
    model: str
    dist: str
    system: str
    batch: int
    step_ms: float
    tokens_per_s: float
    real_tokens_per_s: float
    peak_gib: float
    mfu: float


def megabert_model(size: str, dims: Optional[dict] = None, **overrides) -> tuple[torch.nn.Module, ModelConfig]:
    """megabert at SIZES[size] (or `dims`: hidden_size, num_layers, num_heads, intermediate_size[, vocab_size])."""
    cfg = ModelConfig(**{**(dims or SIZES[size]), "hidden_dropout": 0.1, "attention_dropout": 0.0, **overrides})
    return MosaicBertForMaskedLM(cfg), cfg


def hf_model(size: str, attn: str, dims: Optional[dict] = None) -> tuple[torch.nn.Module, ModelConfig]:
    """Hugging Face BertForMaskedLM of the same size, and the config its useful FLOPs are counted with."""
    from transformers import BertConfig, BertForMaskedLM

    s = dict(dims or SIZES[size])
    vocab = s.pop("vocab_size", 30528)
    hf_cfg = BertConfig(vocab_size=vocab, hidden_size=s["hidden_size"], num_hidden_layers=s["num_layers"],
                        num_attention_heads=s["num_heads"], intermediate_size=s["intermediate_size"],
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0, max_position_embeddings=512)
    model = BertForMaskedLM._from_config(hf_cfg, attn_implementation=attn)
    # The same FLOP formula for the HF architecture: GeLU MLP, learned positions, head counted on masked tokens.
    flops_cfg = ModelConfig(**s, vocab_size=vocab, mlp_type="gelu", position_embedding="learned")
    return model, flops_cfg


@contextlib.contextmanager
def env(overrides: dict[str, str]):
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_one(build: Callable[[], tuple[torch.nn.Module, ModelConfig]], is_hf: bool, compile_model: bool,
            size: str, dist: str, system: str, peak_tflops: float, steps: int, warmup: int) -> Result:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model, flops_cfg = build()
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    extra = {}
    if compile_model and not is_hf:
        step_model, extra = compile_megabert(model), {"mlm_output": "loss"}
    else:
        step_model = torch.compile(model) if compile_model else model
    batch = BATCH[(size, dist)]
    # Batches start in pinned host memory, as a DataLoader delivers them: each step pays its own copy to the GPU.
    batches = make_mlm_batches(dist, batch, 8, 30528, torch.device("cpu"))
    host = [{"input_ids": b.input_ids.pin_memory(), "attention_mask": b.attention_mask.pin_memory(),
             "labels": b.labels.pin_memory()} for b in batches]

    def step(i: int) -> None:
        b = host[i % len(host)]
        if is_hf:
            inputs = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        else:  # unpadding and masked-token bookkeeping on the CPU: no device sync in the step
            inputs = prepare_inputs(b, model.cfg, device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = step_model(**inputs, **extra)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(warmup):  # compile, Triton JIT, allocator warm-up
        step(i)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = time_cuda(step, 0, steps)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    seconds = median(times)
    real = sum(sum(b.lengths) for b in batches) / len(batches)
    padded = batch * DISTRIBUTIONS[dist][0]
    flops = sum(training_step_flops(flops_cfg, b.lengths, b.masked_tokens) for b in batches) / len(batches)
    del model, opt, step_model, batches, host
    gc.collect()
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    return Result(size, dist, system, batch, seconds * 1e3, padded / seconds, real / seconds, peak,
                  flops / seconds / (peak_tflops * 1e12))


def print_table(title: str, results: list[Result], baseline: Callable[[Result], Result | None]) -> None:
    print(f"\n### {title}\n")
    print("| model | dist | system | batch | step ms | tokens/s | real tokens/s | peak GiB | MFU | real tok/s vs ref |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ref = baseline(r)
        ratio = f"{r.real_tokens_per_s / ref.real_tokens_per_s:.2f}x" if ref else "-"
        print(f"| {r.model} | {r.dist} | {r.system} | {r.batch} | {r.step_ms:.1f} | {r.tokens_per_s:,.0f} | "
              f"{r.real_tokens_per_s:,.0f} | {r.peak_gib:.1f} | {100 * r.mfu:.1f}% | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["base"], choices=sorted(SIZES))
    parser.add_argument("--dists", nargs="+", default=["c4-128", "c4-512"], choices=sorted(DISTRIBUTIONS))
    parser.add_argument("--systems", nargs="*", default=["megabert", "hf-sdpa", "hf-eager", "hf-compile"],
                        choices=["megabert", "megabert-compile", "hf-sdpa", "hf-eager", "hf-compile"])
    parser.add_argument("--ablation", action="store_true", help="megabert-base ablation table on --ablation-dists")
    parser.add_argument("--ablation-dists", nargs="+", default=["c4-128"], choices=sorted(DISTRIBUTIONS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=4)
    args = parser.parse_args()

    print(environment_line())
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = measure_matmul_tflops()
    print(f"bf16 8192^3 matmul: {peak:.1f} TFLOP/s (MFU denominator)")
    probe = torch.zeros(1, 12, 64, device="cuda", dtype=torch.bfloat16)
    print(f"megabert attention backend (auto): {resolve_backend('auto', probe)}")
    for dist in DISTRIBUTIONS:
        print(f"{dist}: padding {100 * padding_fraction(make_mlm_batches(dist, 256, 8, 30528, 'cpu')):.1f}%")

    results: list[Result] = []
    for size in args.models:
        for dist in args.dists:
            for system in args.systems:
                if system.startswith("megabert"):
                    build, is_hf, comp = (lambda s=size: megabert_model(s)), False, system == "megabert-compile"
                else:
                    attn = "eager" if system == "hf-eager" else "sdpa"
                    build, is_hf, comp = (lambda s=size, a=attn: hf_model(s, a)), True, system == "hf-compile"
                try:
                    r = run_one(build, is_hf, comp, size, dist, system, peak, args.steps, args.warmup)
                except Exception as exc:  # noqa: BLE001 -- keep the other rows
                    print(f"{size} {dist} {system}: failed: {exc!r}", flush=True)
                    continue
                results.append(r)
                print(f"{size} {dist} {system}: {r.step_ms:.1f} ms, {r.real_tokens_per_s:,.0f} real tok/s, "
                      f"{r.peak_gib:.1f} GiB, MFU {100 * r.mfu:.1f}%", flush=True)

    def hf_compiled(r: Result) -> Result | None:
        return next((x for x in results if (x.model, x.dist, x.system) == (r.model, r.dist, "hf-compile")), None)

    if results:
        print_table("Throughput (ratio: real tokens/s vs hf-compile of the same size and dist)", results, hf_compiled)

    if args.ablation:
        ablation: list[Result] = []
        for dist in args.ablation_dists:
            for label, overrides, env_overrides in ABLATIONS:
                with env(env_overrides):
                    try:
                        r = run_one(lambda o=overrides: megabert_model("base", **o), False, False, "base", dist,
                                    label, peak, args.steps, args.warmup)
                    except Exception as exc:  # noqa: BLE001
                        print(f"ablation {label} {dist}: failed: {exc!r}", flush=True)
                        continue
                ablation.append(r)
                print(f"ablation {dist} {label}: {r.real_tokens_per_s:,.0f} real tok/s, MFU {100 * r.mfu:.1f}%",
                      flush=True)

        def all_on(r: Result) -> Result | None:
            return next((x for x in ablation if x.dist == r.dist and x.system == "all on"), None)

        print_table("Ablation, megabert-base (ratio: real tokens/s vs all on)", ablation, all_on)


if __name__ == "__main__":
    main()
