"""Useful model FLOPs and MFU, one formula for every system compared (docs/ARCHITECTURE.md's benchmark protocol).

Useful FLOPs of one training step (forward + backward = 3 x forward, 2 FLOPs per multiply-add):
    6 x encoder matmul parameters x real (non-pad) tokens
  + 6 x MLM-head matmul parameters (transform H x H + decoder H x V) x masked tokens
  + 12 x layers x hidden x sum_i s_i^2            (attention scores and context, per sequence of s_i tokens)
Embedding lookups, norms and activations are not counted; padding and an MLM head run on unmasked tokens are
work a system chooses to do, not useful work, so they are not counted either.

MFU = useful FLOPs per second / the bf16 matmul rate measured in the same run (measure_matmul_tflops).
"""

from __future__ import annotations

import time
from typing import Iterable, Optional

import torch

from megabert.config import ModelConfig


def encoder_matmul_params(cfg: ModelConfig) -> int:
    """Weights of the encoder's matrix multiplies: QKV, attention output, MLP in (x2 for GeGLU) and out."""
    hidden, inter = cfg.hidden_size, cfg.intermediate_size
    mlp_in = hidden * inter * (2 if cfg.mlp_type == "geglu" else 1)
    return cfg.num_layers * (4 * hidden * hidden + mlp_in + inter * hidden)


def head_matmul_params(cfg: ModelConfig) -> int:
    """The MLM head's transform (H x H) and tied decoder (H x V)."""
    return cfg.hidden_size * cfg.hidden_size + cfg.hidden_size * cfg.vocab_size


def useful_flops(cfg: ModelConfig, real_tokens: int, head_tokens: int, sum_sq_len: int) -> float:
    """The formula of the module docstring from token counts: the one place it is written."""
    return float(6 * encoder_matmul_params(cfg) * real_tokens + 6 * head_matmul_params(cfg) * head_tokens
                 + 12 * cfg.num_layers * cfg.hidden_size * sum_sq_len)


def training_step_flops(cfg: ModelConfig, seqlens: Iterable[int], masked_tokens: int) -> float:
    """Useful FLOPs of one forward + backward over sequences of real lengths `seqlens` (module docstring)."""
    lengths = [int(s) for s in seqlens]
    return useful_flops(cfg, sum(lengths), masked_tokens, sum(s * s for s in lengths))


def mfu(flops_per_step: float, step_seconds: float, peak_flops_per_second: float) -> float:
    return flops_per_step / step_seconds / peak_flops_per_second


def measure_matmul_tflops(device: Optional[torch.device] = None, n: int = 8192, dtype: torch.dtype = torch.bfloat16,
                          warmup: int = 5, iters: int = 30) -> float:
    """Median rate (TFLOP/s) of an n x n x n matmul on random data, timed with CUDA events (wall clock on a CPU,
    where benchmarks pass a smaller n)."""
    device = torch.device(device or "cuda")
    gen = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG (dropout, exact resume) untouched
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.matmul(a, b, out=out)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b, out=out)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            began = time.perf_counter()
            torch.matmul(a, b, out=out)
            times.append(time.perf_counter() - began)
    times.sort()
    return 2 * n ** 3 / times[len(times) // 2] / 1e12
