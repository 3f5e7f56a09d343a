"""Fused GeGLU activation: gelu(gate) * value from the [gate | value] output of one input projection.

    geglu(gate_value) -> out      gate_value: [..., 2 * I] (gate first, as MosaicBERT's `gated_layers`),
                                  out: [..., I]; exact (erf) GELU.

Eager PyTorch runs chunk -> gelu -> mul as separate kernels and saves gate, value and gelu(gate) for the
backward. The fused kernel reads the input once, writes the output once, and its backward recomputes
gelu(gate) from the saved input: fewer bytes both ways and one saved activation instead of three.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from megabert.ops import compiled_geglu_kernel, fused_ops_enabled, triton_interpreting

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = None


# ---------------------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------------------


def geglu_reference(gate_value: torch.Tensor) -> torch.Tensor:
    gate, value = gate_value.chunk(2, dim=-1)  # each [..., I]
    return F.gelu(gate) * value


# ---------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _gelu_parts(gate):
        """gelu(g) = g * Phi(g) and its derivative Phi(g) + g * phi(g), in fp32."""
        cdf = 0.5 * (1.0 + tl.math.erf(gate * 0.7071067811865476))
        pdf = tl.exp(-0.5 * gate * gate) * 0.3989422804014327
        return gate * cdf, cdf + gate * pdf

    @triton.jit
    def _geglu_fwd_kernel(X, OUT, n_elements, inner, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n_elements
        row = offs // inner
        col = offs - row * inner
        gate_ptr = X + row * (2 * inner) + col
        gate = tl.load(gate_ptr, mask=ok, other=0.0).to(tl.float32)
        value = tl.load(gate_ptr + inner, mask=ok, other=0.0).to(tl.float32)
        gelu, _ = _gelu_parts(gate)
        tl.store(OUT + offs, (gelu * value).to(OUT.dtype.element_ty), mask=ok)

    @triton.jit
    def _geglu_bwd_kernel(X, DOUT, DX, n_elements, inner, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n_elements
        row = offs // inner
        col = offs - row * inner
        in_offs = row * (2 * inner) + col
        gate = tl.load(X + in_offs, mask=ok, other=0.0).to(tl.float32)
        value = tl.load(X + in_offs + inner, mask=ok, other=0.0).to(tl.float32)
        dout = tl.load(DOUT + offs, mask=ok, other=0.0).to(tl.float32)
        gelu, dgelu = _gelu_parts(gate)
        tl.store(DX + in_offs, (dout * value * dgelu).to(DX.dtype.element_ty), mask=ok)
        tl.store(DX + in_offs + inner, (dout * gelu).to(DX.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------------------------

_BLOCK = 1024


def _check(gate_value: torch.Tensor) -> None:
    if gate_value.shape[-1] % 2:
        raise ValueError(f"geglu needs an even last dim ([gate | value]), got {tuple(gate_value.shape)}")


def geglu_fwd(gate_value: torch.Tensor) -> torch.Tensor:
    x = gate_value.contiguous()
    inner = x.shape[-1] // 2
    out = torch.empty(*x.shape[:-1], inner, dtype=x.dtype, device=x.device)
    n = out.numel()
    if n:
        _geglu_fwd_kernel[(triton.cdiv(n, _BLOCK),)](x, out, n, inner, BLOCK=_BLOCK)
    return out


def geglu_bwd(gate_value: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    x, dout = gate_value.contiguous(), grad_out.contiguous()
    dx = torch.empty_like(x)
    n = dout.numel()
    if n:
        _geglu_bwd_kernel[(triton.cdiv(n, _BLOCK),)](x, dout, dx, n, x.shape[-1] // 2, BLOCK=_BLOCK)
    return dx


# ---------------------------------------------------------------------------------------------------------------
# Autograd: autograd.Function in eager mode (cheapest dispatch); custom ops (one opaque node each) under
# torch.compile, unless MEGABERT_COMPILE_TRITON_OPS=0 (megabert.ops.compiled_geglu_kernel).
# ---------------------------------------------------------------------------------------------------------------


class GegluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_value):
        ctx.save_for_backward(gate_value)
        return geglu_fwd(gate_value)

    @staticmethod
    def backward(ctx, grad_out):
        (gate_value,) = ctx.saved_tensors
        return geglu_bwd(gate_value, grad_out)


@torch.library.custom_op("megabert::geglu_fwd", mutates_args=())
def _geglu_fwd(gate_value: torch.Tensor) -> torch.Tensor:
    return geglu_fwd(gate_value)


@_geglu_fwd.register_fake
def _(gate_value):
    return gate_value.new_empty(*gate_value.shape[:-1], gate_value.shape[-1] // 2)


@torch.library.custom_op("megabert::geglu_bwd", mutates_args=())
def _geglu_bwd(gate_value: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    return geglu_bwd(gate_value, grad_out)


@_geglu_bwd.register_fake
def _(gate_value, grad_out):
    return torch.empty_like(gate_value)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, grad_out):
    (gate_value,) = ctx.saved_tensors
    return _geglu_bwd(gate_value, grad_out)


_geglu_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# Functional API
# ---------------------------------------------------------------------------------------------------------------


def is_available(tensor: torch.Tensor) -> bool:
    """Whether the Triton kernel runs: CUDA tensors (CPU too under TRITON_INTERPRET=1, for tests); inside
    torch.compile unless MEGABERT_COMPILE_TRITON_OPS=0 (then Inductor compiles the reference)."""
    return (fused_ops_enabled() and triton is not None and (tensor.is_cuda or triton_interpreting())
            and (not torch.compiler.is_compiling() or compiled_geglu_kernel()))


def geglu(gate_value: torch.Tensor) -> torch.Tensor:
    """gelu(gate) * value for gate_value = [gate | value] on the last dim; fused on CUDA, eager elsewhere."""
    _check(gate_value)
    if not is_available(gate_value):
        return geglu_reference(gate_value)
    if torch.compiler.is_compiling():
        return _geglu_fwd(gate_value)  # one opaque node in the graph
    return GegluFunction.apply(gate_value)
