"""Fused dropout + residual add + LayerNorm: y = LayerNorm(dropout(x) + residual) over the last dim, fp32 stats.

    add_layernorm(x, residual, weight, bias, eps, dropout_p=0.0) -> y      x, residual, y: [..., H] (same dtype)

A post-LN layer ends every sub-block with norm(hidden + sublayer(hidden)). Eager PyTorch writes the sum, reads
it back for the norm and saves it for the backward, and dropout before it is two more passes plus a stored mask;
the fused kernel reads both inputs once and writes y, keeping only per-row mean and 1/std (fp32) for the backward,
which recomputes the normalised row -- and regenerates the dropout mask from its seed -- from the inputs.
The output stays in the input dtype (bf16 under autocast),
i.e. this is MosaicBERT's low-precision LayerNorm, with fp32 accumulation inside the kernel.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from megabert.ops import fused_ops_enabled, triton_interpreting

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = None


# ---------------------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------------------


def add_layernorm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            eps: float) -> torch.Tensor:
    return F.layer_norm(x + residual, (x.shape[-1],), weight.to(x.dtype), bias.to(x.dtype), eps)


# ---------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _dropout_scale(row, cols, n_cols, seed, p, HAS_DROPOUT: tl.constexpr):
        """Per-element factor keep / (1 - p) from a counter-based RNG (Philox) keyed on (seed, element index):
        the backward regenerates the same mask instead of storing it."""
        if HAS_DROPOUT:
            offsets = (row * n_cols + cols).to(tl.int32)  # wraps past 2^31 elements: masks repeat, still valid
            keep = tl.rand(seed, offsets) >= p
            return tl.where(keep, 1.0 / (1.0 - p), 0.0)
        else:
            return 1.0

    @triton.jit
    def _add_layernorm_fwd_kernel(X, R, W, B, Y, MEAN, RSTD, n_cols, eps, seed, p, HAS_DROPOUT: tl.constexpr,
                                  BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < n_cols
        drop = _dropout_scale(row, cols, n_cols, seed, p, HAS_DROPOUT)
        s = (tl.load(X + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32) * drop
             + tl.load(R + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32))
        mean = tl.sum(s, 0) / n_cols
        centered = tl.where(ok, s - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, 0) / n_cols + eps)
        w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(Y + row * n_cols + cols, (centered * rstd * w + b).to(Y.dtype.element_ty), mask=ok)
        tl.store(MEAN + row, mean)
        tl.store(RSTD + row, rstd)

    @triton.jit
    def _add_layernorm_bwd_kernel(X, R, W, DY, DX, DR, MEAN, RSTD, DW_PARTIAL, DB_PARTIAL, n_rows, n_cols,
                                  rows_per_program, seed, p, HAS_DROPOUT: tl.constexpr, BLOCK: tl.constexpr):
        """ds = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat)) is d(residual); d(x) = ds * dropout factor
        (written only with dropout: without it, d(x) is d(residual)); dw, db summed per program into partials."""
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        ok = cols < n_cols
        w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK], tl.float32)
        db = tl.zeros([BLOCK], tl.float32)
        first = pid * rows_per_program
        for i in range(0, rows_per_program):
            row = (first + i).to(tl.int64)
            if row < n_rows:
                drop = _dropout_scale(row, cols, n_cols, seed, p, HAS_DROPOUT)
                s = (tl.load(X + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32) * drop
                     + tl.load(R + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32))
                dy = tl.load(DY + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32)
                mean = tl.load(MEAN + row)
                rstd = tl.load(RSTD + row)
                xhat = tl.where(ok, (s - mean) * rstd, 0.0)
                wdy = w * dy
                c1 = tl.sum(xhat * wdy, 0) / n_cols
                c2 = tl.sum(wdy, 0) / n_cols
                ds = (wdy - (xhat * c1 + c2)) * rstd
                tl.store(DR + row * n_cols + cols, ds.to(DR.dtype.element_ty), mask=ok)
                if HAS_DROPOUT:
                    tl.store(DX + row * n_cols + cols, (ds * drop).to(DX.dtype.element_ty), mask=ok)
                dw += dy * xhat
                db += dy
        tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=ok)
        tl.store(DB_PARTIAL + pid * n_cols + cols, db, mask=ok)


# ---------------------------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------------------------


def _block(n_cols: int) -> int:
    return triton.next_power_of_2(n_cols)


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8


def add_ln_fwd(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               eps: float, dropout_p: float = 0.0, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y (x's dtype, x's shape), per-row mean and 1/std (fp32). dropout_p > 0 drops x (not residual), with the
    mask drawn from `seed`."""
    n_cols = x.shape[-1]
    x2, r2 = x.reshape(-1, n_cols).contiguous(), residual.reshape(-1, n_cols).contiguous()
    n_rows = x2.shape[0]
    y = torch.empty_like(x2)
    mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    if n_rows:
        block = _block(n_cols)
        _add_layernorm_fwd_kernel[(n_rows,)](x2, r2, weight, bias, y, mean, rstd, n_cols, eps, seed, dropout_p,
                                             HAS_DROPOUT=dropout_p > 0.0, BLOCK=block, num_warps=_warps(block))
    return y.view(x.shape), mean, rstd


def add_ln_bwd(grad_y: torch.Tensor, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
               mean: torch.Tensor, rstd: torch.Tensor, dropout_p: float = 0.0, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dx, dresidual, dweight, dbias. Without dropout dx and dresidual are the same tensor."""
    n_cols = x.shape[-1]
    x2, r2 = x.reshape(-1, n_cols).contiguous(), residual.reshape(-1, n_cols).contiguous()
    dy = grad_y.reshape(-1, n_cols).contiguous()
    n_rows = x2.shape[0]
    dres = torch.empty_like(x2)
    dx = torch.empty_like(x2) if dropout_p > 0.0 else dres
    programs = max(1, min(n_rows, 4 * _sm_count(x.device)))
    rows_per_program = triton.cdiv(max(n_rows, 1), programs)
    partials = torch.empty(2, programs, n_cols, dtype=torch.float32, device=x.device)  # [dw | db] per program
    if n_rows:
        block = _block(n_cols)
        _add_layernorm_bwd_kernel[(programs,)](x2, r2, weight, dy, dx, dres, mean, rstd, partials[0], partials[1],
                                               n_rows, n_cols, rows_per_program, seed, dropout_p,
                                               HAS_DROPOUT=dropout_p > 0.0, BLOCK=block, num_warps=_warps(block))
    else:
        partials.zero_()
    dw, db = partials.sum(1).to(weight.dtype).unbind(0)
    return dx.view(x.shape), dres.view(x.shape), dw, db


@functools.lru_cache(maxsize=None)
def _sm_count_of(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())
    return 2  # interpreter: few programs, each looping over rows


# ---------------------------------------------------------------------------------------------------------------
# Autograd: an autograd.Function in eager mode. Inside torch.compile the reference formula is traced instead:
# Inductor fuses it with the bias add and gradient sums around it, and as an opaque op the kernel was no faster in
# the compiled step (docs/BENCHMARKS.md).
# ---------------------------------------------------------------------------------------------------------------


class AddLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, dropout_p, seed):
        y, mean, rstd = add_ln_fwd(x, residual, weight, bias, eps, dropout_p, seed)
        ctx.save_for_backward(x, residual, weight, mean, rstd)
        ctx.dropout_p, ctx.seed = dropout_p, seed
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, residual, weight, mean, rstd = ctx.saved_tensors
        dx, dres, dw, db = add_ln_bwd(grad_y, x, residual, weight, mean, rstd, ctx.dropout_p, ctx.seed)
        return dx, dres, dw, db, None, None, None


# ---------------------------------------------------------------------------------------------------------------
# Functional API
# ---------------------------------------------------------------------------------------------------------------


def is_available(tensor: torch.Tensor) -> bool:
    """Whether the Triton kernels run: CUDA tensors (CPU too under TRITON_INTERPRET=1, for tests), H <= 16384;
    never inside torch.compile (Inductor fuses the reference formula)."""
    return (fused_ops_enabled() and triton is not None and tensor.shape[-1] <= 16384
            and (tensor.is_cuda or triton_interpreting()) and not torch.compiler.is_compiling())


def add_layernorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  eps: float, dropout_p: float = 0.0) -> torch.Tensor:
    """LayerNorm(dropout(x) + residual) in x's dtype (fp32 statistics); fused on CUDA, eager elsewhere.

    dropout_p > 0 (training) drops elements of x with a mask drawn in the kernel, its seed from torch's CPU
    generator (no device work), so torch.manual_seed makes it reproducible; the mask differs from F.dropout's for
    that seed. Inside torch.compile this is F.dropout + the reference, which Inductor compiles.
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if x.shape != residual.shape or x.dtype != residual.dtype:
        raise ValueError(f"add_layernorm needs x and residual of one shape and dtype, got {tuple(x.shape)} "
                         f"{x.dtype} and {tuple(residual.shape)} {residual.dtype}")
    if not is_available(x):
        if dropout_p > 0.0:
            x = F.dropout(x, dropout_p, training=True)
        return add_layernorm_reference(x, residual, weight, bias, eps)
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item()) if dropout_p > 0.0 else 0  # CPU generator: no sync
    return AddLayerNormFunction.apply(x, residual, weight, bias, eps, dropout_p, seed)
