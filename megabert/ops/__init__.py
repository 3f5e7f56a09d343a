"""Kernels and their references: one op per file (reference, Triton kernel, launcher, autograd, functional API)."""

import os

import torch


def fused_ops_enabled() -> bool:
    """MEGABERT_FUSED_OPS=0 turns the fused GeGLU and dropout+add+LayerNorm kernels off (ablations, debugging)."""
    return os.environ.get("MEGABERT_FUSED_OPS", "1") != "0"


def triton_interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton runs kernels on the CPU (tests). Read at call time, as Triton reads it."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


COMPILE_TRITON_OPS = ("geglu", "add_layernorm")
"""The fused elementwise ops that can run their own Triton kernel inside torch.compile (as custom ops)."""
DEFAULT_COMPILE_TRITON_OPS = "geglu"
"""Inside torch.compile by default: the Triton GeGLU (Inductor's code for its backward ran 3x slower, 8.2 against
2.8 ms per base c4-128 step on an H200), Inductor's code for add+LayerNorm (docs/BENCHMARKS.md)."""


def compile_triton_ops() -> frozenset[str]:
    """MEGABERT_COMPILE_TRITON_OPS: which fused elementwise ops run their Triton kernels inside torch.compile, as a
    comma-separated list of COMPILE_TRITON_OPS ("1": all, "0": none). The others trace their reference formulas,
    which Inductor fuses with neighbouring work (a bias add, autocast casts, a gradient sum) but may compile into
    slower code than the hand-written kernel."""
    value = os.environ.get("MEGABERT_COMPILE_TRITON_OPS", DEFAULT_COMPILE_TRITON_OPS).strip()
    if value in ("1", "all"):
        return frozenset(COMPILE_TRITON_OPS)
    if value in ("0", "none", ""):
        return frozenset()
    names = frozenset(name.strip() for name in value.split(","))
    unknown = sorted(names - set(COMPILE_TRITON_OPS))
    if unknown:
        raise ValueError(f"MEGABERT_COMPILE_TRITON_OPS names unknown ops {unknown}; known: {COMPILE_TRITON_OPS}, "
                         f"or 1 (all) / 0 (none)")
    return names


def elementwise_kernel_wanted(op: str) -> bool:
    """Whether the fused elementwise op `op` (GeGLU, add+LayerNorm) should launch its own Triton kernel at this
    call: always in eager mode, inside a torch.compile trace when compile_triton_ops() names it."""
    return not torch.compiler.is_compiling() or op in compile_triton_ops()
