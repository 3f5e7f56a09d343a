"""The fused elementwise ops against their peers: dropout + add + LayerNorm and GeGLU, forward and backward.

    python -m benchmarks.fused_ops [--tokens 29800] [--hidden 768 1024]

One process, one GPU, bf16 inputs of a micro-batch's size (--tokens rows; 29,800 is base c4-128's 256 x 128 at
~9% padding). Peers, each on the same inputs: megabert's Triton kernel, the eager PyTorch reference
(F.dropout, add, F.layer_norm / chunk, gelu, mul) and that reference compiled by torch.compile (Inductor, dynamic
shapes as the model compiles). Per row: the median time (triton.testing.do_bench) of the forward and of the
backward, and the bandwidth those reach on the fewest bytes the op must move (each input read once, each output
written once) against the device's copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
import torch._functorch.config

from benchmarks.common import environment_line
from megabert.ops import add_layernorm as add_ln_op
from megabert.ops import geglu as geglu_op


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy, read plus written."""
    import triton.testing

    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * nbytes / (ms * 1e-3)


def bench(fn: Callable[[], object]) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def fwd_bwd_ms(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor],
               grad: torch.Tensor) -> tuple[float, float]:
    """Median ms of the forward alone and of the backward alone (the forward's graph kept for each backward). One
    untimed forward and backward first: a compiled peer compiles there, outside do_bench's estimate of a call."""
    torch.autograd.grad(forward(), inputs, grad)
    torch.cuda.synchronize()
    fwd = bench(forward)
    out = forward()
    bwd = bench(lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True))
    return fwd, bwd


def add_layernorm_rows(tokens: int, hidden: int, p: float, bandwidth: float) -> list[str]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, res = (torch.randn(tokens, hidden, device="cuda", generator=gen, dtype=torch.bfloat16).requires_grad_()
              for _ in range(2))
    w = (1 + 0.1 * torch.randn(hidden, device="cuda", generator=gen)).requires_grad_()
    b = (0.1 * torch.randn(hidden, device="cuda", generator=gen)).requires_grad_()
    grad = torch.randn(tokens, hidden, device="cuda", generator=gen, dtype=torch.bfloat16)

    def reference(x, res, w, b):
        return add_ln_op.add_layernorm_reference(torch.nn.functional.dropout(x, p, training=p > 0), res, w, b, 1e-12)

    compiled = torch.compile(reference, dynamic=True)
    peers = {"megabert Triton": lambda: add_ln_op.add_layernorm(x, res, w, b, 1e-12, p),
             "torch eager": lambda: reference(x, res, w, b),
             "torch.compile (Inductor)": lambda: compiled(x, res, w, b)}
    element = 2  # bf16 bytes
    fwd_bytes = 3 * tokens * hidden * element  # x, residual in; y out
    bwd_bytes = (5 if p > 0 else 4) * tokens * hidden * element  # x, residual, dy in; dresidual (and dx) out
    rows = []
    for name, forward in peers.items():
        fwd, bwd = fwd_bwd_ms(forward, [x, res, w, b], grad)
        rows.append(f"| add+LayerNorm | {tokens} x {hidden} | {p} | {name} | {fwd:.3f} | {bwd:.3f} | "
                    f"{fwd_bytes / (fwd * 1e-3) / bandwidth:.0%} | {bwd_bytes / (bwd * 1e-3) / bandwidth:.0%} |")
    return rows


def geglu_rows(tokens: int, hidden: int, bandwidth: float) -> list[str]:
    inner = 4 * hidden
    gen = torch.Generator(device="cuda").manual_seed(0)
    gate_value = torch.randn(tokens, 2 * inner, device="cuda", generator=gen, dtype=torch.bfloat16).requires_grad_()
    grad = torch.randn(tokens, inner, device="cuda", generator=gen, dtype=torch.bfloat16)
    compiled = torch.compile(geglu_op.geglu_reference, dynamic=True)
    peers = {"megabert Triton": lambda: geglu_op.geglu(gate_value),
             "torch eager": lambda: geglu_op.geglu_reference(gate_value),
             "torch.compile (Inductor)": lambda: compiled(gate_value)}
    fwd_bytes = 3 * tokens * inner * 2
    bwd_bytes = 5 * tokens * inner * 2
    rows = []
    for name, forward in peers.items():
        fwd, bwd = fwd_bwd_ms(forward, [gate_value], grad)
        rows.append(f"| GeGLU | {tokens} x {2 * inner} | - | {name} | {fwd:.3f} | {bwd:.3f} | "
                    f"{fwd_bytes / (fwd * 1e-3) / bandwidth:.0%} | {bwd_bytes / (bwd * 1e-3) / bandwidth:.0%} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=29800)
    parser.add_argument("--hidden", type=int, nargs="+", default=[768, 1024])
    args = parser.parse_args()
    print(environment_line())
    torch._functorch.config.donated_buffer = False  # the compiled peers' backward runs again on one graph
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth (read + write): {bandwidth / 1e12:.2f} TB/s")
    print("| op | shape | dropout | system | fwd ms | bwd ms | fwd of copy bandwidth | bwd of copy bandwidth |\n"
          "|---|---|---|---|---|---|---|---|")
    for hidden in args.hidden:  # rows printed as they are measured: a run cut short keeps what it measured
        for p in (0.0, 0.1):
            print("\n".join(add_layernorm_rows(args.tokens, hidden, p, bandwidth)), flush=True)
        print("\n".join(geglu_rows(args.tokens, hidden, bandwidth)), flush=True)


if __name__ == "__main__":
    main()
