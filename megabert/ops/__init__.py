"""Kernels and their references: one op per file (reference, Triton kernel, launcher, autograd, functional API)."""

import os


def fused_ops_enabled() -> bool:
    """MEGABERT_FUSED_OPS=0 turns the fused GeGLU and dropout+add+LayerNorm kernels off (ablations, debugging)."""
    return os.environ.get("MEGABERT_FUSED_OPS", "1") != "0"
