"""Kernels and their references: one op per file (reference, Triton kernel, launcher, autograd, functional API)."""

import os

import torch


def fused_ops_enabled() -> bool:
    """MEGABERT_FUSED_OPS=0 turns the fused GeGLU and dropout+add+LayerNorm kernels off (ablations, debugging)."""
    return os.environ.get("MEGABERT_FUSED_OPS", "1") != "0"


def triton_interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton runs kernels on the CPU (tests). Read at call time, as Triton reads it."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def compiled_geglu_kernel() -> bool:
    """Whether the GeGLU runs megabert's Triton kernel (a custom op) inside torch.compile: MEGABERT_COMPILE_TRITON_OPS
    1 (the default), or 0 for Inductor's code from the reference formula. Inductor's GeGLU backward ran 3x slower
    (8.2 against 2.8 ms per base c4-128 step on an H200; the kernel made the compiled step 7% faster on an H100:
    docs/BENCHMARKS.md). Dropout + add + LayerNorm always traces its reference inside torch.compile: its kernel as
    an opaque op was no faster in the compiled step, where Inductor fuses the formula with its neighbours."""
    value = os.environ.get("MEGABERT_COMPILE_TRITON_OPS", "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"MEGABERT_COMPILE_TRITON_OPS is {value!r}; use 1 (megabert's Triton GeGLU inside "
                         f"torch.compile, the default) or 0 (Inductor's code)")
    return value == "1"
