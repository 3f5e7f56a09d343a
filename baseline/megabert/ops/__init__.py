"""Kernels and their references: one op per file (reference, Triton kernel, launcher, autograd, functional API)."""

import os


def fused_ops_enabled() -> bool:
    """MEGABERT_FUSED_OPS=0 turns the fused GeGLU and dropout+add+LayerNorm kernels off (ablations, debugging)."""
    return os.environ.get("MEGABERT_FUSED_OPS", "1") != "0"


def triton_interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton runs kernels on the CPU (tests). Read at call time, as Triton reads it."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
