"""Kernels and their references: one op per file (reference, Triton kernel, launcher, autograd, functional API)."""

import os

import torch


def fused_ops_enabled() -> bool:
    """MEGABERT_FUSED_OPS=0 turns the fused GeGLU and dropout+add+LayerNorm kernels off (ablations, debugging)."""
    return os.environ.get("MEGABERT_FUSED_OPS", "1") != "0"


def triton_interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton runs kernels on the CPU (tests). Read at call time, as Triton reads it."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def compile_uses_triton_ops() -> bool:
    """MEGABERT_COMPILE_TRITON_OPS=1: inside torch.compile, run the Triton GeGLU and dropout+add+LayerNorm kernels
    (as custom ops). Off by default: there Inductor generates fused code from the reference formulas instead,
    which lets it fold the neighbouring work (a bias add, autocast casts, a bias-gradient sum) into the same
    kernels, which an opaque custom op would stop."""
    return os.environ.get("MEGABERT_COMPILE_TRITON_OPS", "0") == "1"


def elementwise_kernel_wanted() -> bool:
    """Whether a fused elementwise op (GeGLU, add+LayerNorm) should launch its own Triton kernel at this call:
    always in eager mode, inside a torch.compile trace only with MEGABERT_COMPILE_TRITON_OPS=1."""
    return not torch.compiler.is_compiling() or compile_uses_triton_ops()
