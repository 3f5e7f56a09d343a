"""Attention forward + backward on c4-like batches: megabert's Triton varlen kernel vs the alternatives.

    python -m benchmarks.attention [--dists c4-128 c4-512] [--heads 12] [--head-dim 64]

Systems, all bf16, same q/k/v values, non-causal, ALiBi where the system supports a bias:
  triton-varlen   megabert.ops.flash_attention_triton on unpadded tokens, ALiBi in the kernel
  flash-attn      flash_attn_varlen_func with alibi_slopes (when installed)
  flex-alibi      FlexAttention (torch.compile'd) on the packed tokens, ALiBi score_mod + document block mask
  sdpa-flash      SDPA flash backend on the padded batch, no bias and no padding mask (a speed reference only:
                  it computes something else -- every pad token attends and is attended to)
  sdpa-alibi      SDPA on the padded batch with an additive ALiBi + padding bias (what HF-style code does)
Reported: median ms per fwd+bwd over many iterations (CUDA events), and useful TFLOP/s =
12 * heads * head_dim * sum(s_i^2) / time (the same count for every system, padding not counted).
Two timings per system: "eager" launches every call from Python (host overhead included, as in an eager training
step), "graph" replays a CUDA graph of one fwd+bwd (GPU time only: what the kernels cost once the host keeps
ahead of the GPU, as it does in a training step whose matmuls take longer than the launches).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from benchmarks.common import DISTRIBUTIONS, environment_line, median, sample_lengths, time_cuda

from megabert.ops import flash_attention_triton, flash_attn_backend
from megabert.ops.alibi import alibi_slopes
from megabert.ops.attention import padded_attention_bias
from megabert.ops.padding import pad_input, unpad_indices

TOKENS_PER_BATCH = {"c4-128": 128 * 256, "c4-512": 512 * 64}


def build_systems(q, k, v, cu_seqlens, max_seqlen, lengths, slopes, seq):
    """name -> (fn() -> out, the leaf tensors to differentiate, a grad_out of out's shape)."""
    heads, head_dim = q.shape[1], q.shape[2]
    batch = len(lengths)
    systems = {}

    def varlen(fn):
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        return (lambda: fn(*leaves, cu_seqlens, max_seqlen, slopes), leaves, torch.randn_like(q))

    systems["triton-varlen"] = varlen(flash_attention_triton.varlen_attention)
    if flash_attn_backend.is_available(q):
        systems["flash-attn"] = varlen(flash_attn_backend.varlen_attention)

    # FlexAttention on packed tokens [1, heads, T_pad, d]: document mask from sequence ids, ALiBi as score_mod.
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        total = q.shape[0]
        padded_total = -(-total // 128) * 128
        doc = torch.repeat_interleave(torch.arange(batch, device=q.device),
                                      torch.tensor(lengths, device=q.device))
        doc = F.pad(doc, (0, padded_total - total), value=-1)  # pad tokens: their own "document"

        def doc_mask(b, h, q_idx, kv_idx):
            return doc[q_idx] == doc[kv_idx]

        def alibi(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx - kv_idx).abs()

        block_mask = create_block_mask(doc_mask, None, None, padded_total, padded_total, device=q.device)
        flex = torch.compile(flex_attention)
        packed = [F.pad(x, (0, 0, 0, 0, 0, padded_total - total)).transpose(0, 1)[None].detach().clone()
                  .requires_grad_() for x in (q, k, v)]  # [1, heads, T_pad, d]
        systems["flex-alibi"] = (lambda: flex(*packed, score_mod=alibi, block_mask=block_mask), packed,
                                 torch.randn_like(packed[0]))
    except Exception as exc:  # noqa: BLE001 -- report and go on with the other systems
        print(f"flex-alibi unavailable: {exc!r}")

    indices = unpad_indices(cu_seqlens, seq)
    padded = [pad_input(x.reshape(x.shape[0], -1), indices, batch, seq).view(batch, seq, heads, head_dim)
              .transpose(1, 2).detach().clone().requires_grad_() for x in (q, k, v)]  # [B, heads, S, d]
    key_mask = torch.zeros(batch * seq, dtype=torch.bool, device=q.device)
    key_mask[indices] = True
    bias = padded_attention_bias(slopes, key_mask.view(batch, seq), q.dtype)  # [B, heads, S, S]

    def sdpa_flash():
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(*padded)

    systems["sdpa-flash"] = (sdpa_flash, padded, torch.randn_like(padded[0]))
    systems["sdpa-alibi"] = (lambda: F.scaled_dot_product_attention(*padded, attn_mask=bias), padded,
                             torch.randn_like(padded[0]))
    return systems


def time_graph(fn, leaves, grad_out, warmup: int, iters: int) -> float:
    """Median seconds per replay of a CUDA graph holding one fwd+bwd."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            torch.autograd.grad(fn(), leaves, grad_out)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.autograd.grad(fn(), leaves, grad_out)
    return median(time_cuda(lambda _i: graph.replay(), warmup, iters))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dists", nargs="+", default=["c4-128", "c4-512"], choices=sorted(DISTRIBUTIONS))
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    print(environment_line())
    device = torch.device("cuda")
    rows = []
    for dist in args.dists:
        seq = DISTRIBUTIONS[dist][0]
        batch = TOKENS_PER_BATCH[dist] // seq
        lengths = sample_lengths(dist, batch, torch.Generator().manual_seed(0))
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
        total = sum(lengths)
        q, k, v = (torch.randn(total, args.heads, args.head_dim, device=device, dtype=torch.bfloat16)
                   for _ in range(3))
        slopes = alibi_slopes(args.heads).to(device)
        flops = 12 * args.heads * args.head_dim * sum(s * s for s in lengths)
        for name, (fn, leaves, grad_out) in build_systems(q, k, v, cu, max(lengths), lengths, slopes, seq).items():
            def step(_i, fn=fn, leaves=leaves, grad_out=grad_out):
                torch.autograd.grad(fn(), leaves, grad_out)

            try:
                seconds = median(time_cuda(step, args.warmup, args.iters))
            except Exception as exc:  # noqa: BLE001
                print(f"{dist} {name}: failed: {exc!r}")
                continue
            try:
                graph_seconds = time_graph(fn, leaves, grad_out, args.warmup, args.iters)
            except Exception as exc:  # noqa: BLE001 -- a system that cannot be captured keeps its eager time
                print(f"{dist} {name}: CUDA graph capture failed: {exc!r}")
                graph_seconds = float("nan")
            rows.append((dist, name, seconds * 1e3, graph_seconds * 1e3))
            print(f"{dist:7s} {name:14s} eager {seconds * 1e3:8.3f} ms  graph {graph_seconds * 1e3:8.3f} ms  "
                  f"graph {flops / graph_seconds / 1e12:7.1f} TFLOP/s", flush=True)
    print("\n| dist | batch x seq | system | fwd+bwd ms (eager launch) | fwd+bwd ms (CUDA graph) | useful TFLOP/s "
          "(graph) | graph time / triton-varlen |")
    print("|---|---|---|---|---|---|---|")
    for dist, name, ms, graph_ms in rows:
        seq = DISTRIBUTIONS[dist][0]
        batch = TOKENS_PER_BATCH[dist] // seq
        lengths = sample_lengths(dist, batch, torch.Generator().manual_seed(0))
        flops = 12 * args.heads * args.head_dim * sum(s * s for s in lengths)
        ours = next(r[3] for r in rows if r[0] == dist and r[1] == "triton-varlen")
        print(f"| {dist} | {batch} x {seq} | {name} | {ms:.3f} | {graph_ms:.3f} | {flops / graph_ms / 1e9:.1f} | "
              f"{graph_ms / ours:.2f}x |")
    if os.environ.get("MEGABERT_TRITON_AUTOTUNE") == "1":
        print("autotuned:", flash_attention_triton.tuned_configs())


if __name__ == "__main__":
    main()
