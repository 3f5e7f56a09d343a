"""Fused dropout + residual add + LayerNorm: y = LayerNorm(dropout(x) + residual) over the last dim, fp32 stats.

    add_layernorm(x, residual, weight, bias, eps, dropout_p=0.0) -> y      x, residual, y: [..., H] (same dtype)

A post-LN layer ends every sub-block with norm(hidden + sublayer(hidden)). Eager PyTorch writes the sum, reads
it back for the norm and saves it for the backward, and dropout before it is two more passes plus a stored mask;
the fused kernel reads both inputs once and writes y, keeping only per-row mean and 1/std (fp32) and, with dropout,
a one-byte keep mask for the backward, which recomputes the normalised row from the inputs.
The output stays in the input dtype (bf16 under autocast),
i.e. this is MosaicBERT's low-precision LayerNorm, with fp32 accumulation inside the kernel.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from megabert.ops import elementwise_kernel_wanted, fused_ops_enabled, triton_interpreting

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
#
# A row of H columns is handled as four column segments of Q = ceil(H / 4) columns each (lanes past H masked), so
# that one Philox call -- four 32-bit outputs -- draws the dropout decisions of four elements, one per segment:
# element (row, k * Q + j) keeps when output k of Philox(seed, row * Q + j) says so. Philox costs ~100 integer
# instructions per call; one call per element made the dropout kernels compute-bound at ~4x their memory time.
# Each forward program takes ROWS rows at a time as [ROWS, BLOCK] tiles, one tile per segment. The forward stores
# which elements it kept (uint8, one byte per element); the backward reads that mask instead of drawing the numbers
# again, one row at a time over the full row.
# ---------------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _dropout_scales(counter, seed, p, HAS_DROPOUT: tl.constexpr, SEED_IS_PTR: tl.constexpr):
        """keep / (1 - p) for the four segments' elements at Philox counter `counter` ([ROWS, BLOCK], int32:
        it wraps past 2^31, so masks repeat there, still valid). The seed is a number, or (SEED_IS_PTR) a
        one-element device tensor drawn on the device (inside torch.compile nothing waits for the host)."""
        if HAS_DROPOUT:
            if SEED_IS_PTR:
                r0, r1, r2, r3 = tl.randint4x(tl.load(seed), counter)
            else:
                r0, r1, r2, r3 = tl.randint4x(seed, counter)
            scale = 1.0 / (1.0 - p)
            return (tl.where(tl.uint_to_uniform_float(r0) >= p, scale, 0.0),
                    tl.where(tl.uint_to_uniform_float(r1) >= p, scale, 0.0),
                    tl.where(tl.uint_to_uniform_float(r2) >= p, scale, 0.0),
                    tl.where(tl.uint_to_uniform_float(r3) >= p, scale, 0.0))
        else:
            return 1.0, 1.0, 1.0, 1.0

    @triton.jit
    def _segment(rows, row_ok, cols, k, seg_cols, n_cols):
        """Offsets [ROWS, BLOCK] of segment k's elements and their mask."""
        col = k * seg_cols + cols
        ok = row_ok & (cols < seg_cols) & (col < n_cols)
        return rows * n_cols + col, ok

    @triton.jit
    def _fwd_sum(X, R, offs, ok, drop):
        return (tl.load(X + offs, mask=ok, other=0.0).to(tl.float32) * drop
                + tl.load(R + offs, mask=ok, other=0.0).to(tl.float32))

    @triton.jit
    def _fwd_store(Y, KEEP, W, B, offs, ok, k, seg_cols, cols, centered, rstd, drop, HAS_DROPOUT: tl.constexpr):
        if HAS_DROPOUT:
            tl.store(KEEP + offs, (drop != 0.0).to(tl.uint8), mask=ok)
        col_ok = cols < seg_cols
        w = tl.load(W + k * seg_cols + cols, mask=col_ok, other=0.0).to(tl.float32)
        b = tl.load(B + k * seg_cols + cols, mask=col_ok, other=0.0).to(tl.float32)
        tl.store(Y + offs, (centered * rstd * w + b).to(Y.dtype.element_ty), mask=ok)

    @triton.jit
    def _add_layernorm_fwd_kernel(X, R, W, B, Y, KEEP, MEAN, RSTD, n_rows, n_cols, seg_cols, eps, seed, p,
                                  HAS_DROPOUT: tl.constexpr, SEED_IS_PTR: tl.constexpr, ROWS: tl.constexpr,
                                  BLOCK: tl.constexpr):
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # [ROWS, 1]
        cols = tl.arange(0, BLOCK)[None, :]  # [1, BLOCK], within a segment
        row_ok = rows < n_rows
        d0, d1, d2, d3 = _dropout_scales((rows * seg_cols + cols).to(tl.int32), seed, p, HAS_DROPOUT, SEED_IS_PTR)
        o0, k0 = _segment(rows, row_ok, cols, 0, seg_cols, n_cols)
        o1, k1 = _segment(rows, row_ok, cols, 1, seg_cols, n_cols)
        o2, k2 = _segment(rows, row_ok, cols, 2, seg_cols, n_cols)
        o3, k3 = _segment(rows, row_ok, cols, 3, seg_cols, n_cols)
        s0 = _fwd_sum(X, R, o0, k0, d0)
        s1 = _fwd_sum(X, R, o1, k1, d1)
        s2 = _fwd_sum(X, R, o2, k2, d2)
        s3 = _fwd_sum(X, R, o3, k3, d3)
        mean = (tl.sum(s0, 1) + tl.sum(s1, 1) + tl.sum(s2, 1) + tl.sum(s3, 1)) / n_cols  # [ROWS]
        c0 = tl.where(k0, s0 - mean[:, None], 0.0)
        c1 = tl.where(k1, s1 - mean[:, None], 0.0)
        c2 = tl.where(k2, s2 - mean[:, None], 0.0)
        c3 = tl.where(k3, s3 - mean[:, None], 0.0)
        var = (tl.sum(c0 * c0, 1) + tl.sum(c1 * c1, 1) + tl.sum(c2 * c2, 1) + tl.sum(c3 * c3, 1)) / n_cols
        rstd = (1.0 / tl.sqrt(var + eps))[:, None]  # [ROWS, 1]
        _fwd_store(Y, KEEP, W, B, o0, k0, 0, seg_cols, cols, c0, rstd, d0, HAS_DROPOUT)
        _fwd_store(Y, KEEP, W, B, o1, k1, 1, seg_cols, cols, c1, rstd, d1, HAS_DROPOUT)
        _fwd_store(Y, KEEP, W, B, o2, k2, 2, seg_cols, cols, c2, rstd, d2, HAS_DROPOUT)
        _fwd_store(Y, KEEP, W, B, o3, k3, 3, seg_cols, cols, c3, rstd, d3, HAS_DROPOUT)
        tl.store(MEAN + rows, mean[:, None], mask=row_ok)
        tl.store(RSTD + rows, rstd, mask=row_ok)

    @triton.jit
    def _add_layernorm_bwd_kernel(X, R, W, DY, KEEP, DX, DR, MEAN, RSTD, DW_PARTIAL, DB_PARTIAL, n_rows, n_cols,
                                  rows_per_program, p, HAS_DROPOUT: tl.constexpr, BLOCK: tl.constexpr):
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
                if HAS_DROPOUT:
                    keep = tl.load(KEEP + row * n_cols + cols, mask=ok, other=0).to(tl.float32)
                    drop = keep * (1.0 / (1.0 - p))
                else:
                    drop = 1.0
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

SEGMENTS = 4
"""Column segments per row in the forward: one Philox call draws the dropout decisions of one element in each."""

FWD_ROWS, FWD_WARPS = 4, 4
"""The forward's rows per tile and warps per program: the fastest of a sweep on an H100 at 29,800 x 768 and x 1024
(0.067 ms at 768 with dropout 0.1)."""


def _geometry(n_cols: int) -> tuple[int, int, int]:
    """The forward's columns per segment, the power-of-two block that covers them, and rows per tile: fewer than
    FWD_ROWS for wide rows, so that a tile stays at most 4096 elements (registers)."""
    seg_cols = triton.cdiv(n_cols, SEGMENTS)
    block = triton.next_power_of_2(seg_cols)
    return seg_cols, block, max(1, min(FWD_ROWS, 4096 // (SEGMENTS * block)))


def add_ln_fwd(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               eps: float, dropout_p: float = 0.0, seed: int | torch.Tensor = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """y (x's dtype, x's shape), per-row mean and 1/std (fp32), and the keep mask (uint8, x's shape; empty without
    dropout). dropout_p > 0 drops x (not residual); `seed` is a number or a one-element int64 tensor on x's device."""
    n_cols = x.shape[-1]
    x2, r2 = x.reshape(-1, n_cols).contiguous(), residual.reshape(-1, n_cols).contiguous()
    n_rows = x2.shape[0]
    y = torch.empty_like(x2)
    keep = torch.empty_like(x2, dtype=torch.uint8) if dropout_p > 0.0 else x2.new_empty(0, dtype=torch.uint8)
    mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    if n_rows:
        seg_cols, block, rows = _geometry(n_cols)
        _add_layernorm_fwd_kernel[(triton.cdiv(n_rows, rows),)](
            x2, r2, weight, bias, y, keep, mean, rstd, n_rows, n_cols, seg_cols, eps, seed, dropout_p,
            HAS_DROPOUT=dropout_p > 0.0, SEED_IS_PTR=isinstance(seed, torch.Tensor), ROWS=rows, BLOCK=block,
            num_warps=FWD_WARPS)
    return y.view(x.shape), mean, rstd, keep.view(x.shape) if dropout_p > 0.0 else keep


def add_ln_bwd(grad_y: torch.Tensor, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
               mean: torch.Tensor, rstd: torch.Tensor, keep: torch.Tensor, dropout_p: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dx, dresidual, dweight, dbias (`keep`: the forward's mask). Without dropout dx and dresidual are the same
    tensor."""
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
        block = triton.next_power_of_2(n_cols)
        _add_layernorm_bwd_kernel[(programs,)](x2, r2, weight, dy, keep, dx, dres, mean, rstd, partials[0],
                                               partials[1], n_rows, n_cols, rows_per_program, dropout_p,
                                               HAS_DROPOUT=dropout_p > 0.0, BLOCK=block,
                                               num_warps=4 if block <= 1024 else 8)
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
# Autograd: autograd.Function in eager mode (cheapest dispatch); custom ops (one opaque node each) under
# torch.compile when MEGABERT_COMPILE_TRITON_OPS names add_layernorm, their dropout seed a device tensor.
# ---------------------------------------------------------------------------------------------------------------


class AddLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, dropout_p, seed):
        y, mean, rstd, keep = add_ln_fwd(x, residual, weight, bias, eps, dropout_p, seed)
        ctx.save_for_backward(x, residual, weight, mean, rstd, keep)
        ctx.dropout_p = dropout_p
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, residual, weight, mean, rstd, keep = ctx.saved_tensors
        dx, dres, dw, db = add_ln_bwd(grad_y, x, residual, weight, mean, rstd, keep, ctx.dropout_p)
        return dx, dres, dw, db, None, None, None


@torch.library.custom_op("megabert::add_layernorm_fwd", mutates_args=())
def _add_ln_fwd(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                dropout_p: float, seed: Optional[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return add_ln_fwd(x, residual, weight, bias, eps, dropout_p, seed if seed is not None else 0)


@_add_ln_fwd.register_fake
def _(x, residual, weight, bias, eps, dropout_p, seed):
    rows = x.numel() // x.shape[-1]
    keep = torch.empty_like(x, dtype=torch.uint8) if dropout_p > 0.0 else x.new_empty(0, dtype=torch.uint8)
    return (torch.empty_like(x), x.new_empty(rows, dtype=torch.float32), x.new_empty(rows, dtype=torch.float32),
            keep)


@torch.library.custom_op("megabert::add_layernorm_bwd", mutates_args=())
def _add_ln_bwd(grad_y: torch.Tensor, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                mean: torch.Tensor, rstd: torch.Tensor, keep: torch.Tensor, dropout_p: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dresidual, dx (an empty tensor without dropout, where dx is dresidual), dweight, dbias."""
    dx, dres, dw, db = add_ln_bwd(grad_y, x, residual, weight, mean, rstd, keep, dropout_p)
    dx = dx if dropout_p > 0.0 else x.new_empty(0)  # custom ops may not return one tensor twice
    return dres, dx, dw.clone(), db.clone()  # nor views of one buffer


@_add_ln_bwd.register_fake
def _(grad_y, x, residual, weight, mean, rstd, keep, dropout_p):
    dx = torch.empty_like(x) if dropout_p > 0.0 else x.new_empty(0)
    return torch.empty_like(x), dx, torch.empty_like(weight), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps, dropout_p, seed = inputs
    _, mean, rstd, keep = output
    ctx.save_for_backward(x, residual, weight, mean, rstd, keep)
    ctx.dropout_p = dropout_p
    ctx.mark_non_differentiable(mean, rstd, keep)


def _backward(ctx, grad_y, grad_mean, grad_rstd, grad_keep):
    x, residual, weight, mean, rstd, keep = ctx.saved_tensors
    dres, dx, dw, db = _add_ln_bwd(grad_y, x, residual, weight, mean, rstd, keep, ctx.dropout_p)
    return (dx if ctx.dropout_p > 0.0 else dres), dres, dw, db, None, None, None


_add_ln_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# Functional API
# ---------------------------------------------------------------------------------------------------------------


def is_available(tensor: torch.Tensor) -> bool:
    """Whether the Triton kernels run: CUDA tensors (CPU too under TRITON_INTERPRET=1, for tests), H <= 16384;
    inside torch.compile only when MEGABERT_COMPILE_TRITON_OPS names add_layernorm (else Inductor fuses the
    reference formula)."""
    return (fused_ops_enabled() and triton is not None and tensor.shape[-1] <= 16384
            and (tensor.is_cuda or triton_interpreting()) and elementwise_kernel_wanted("add_layernorm"))


def add_layernorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  eps: float, dropout_p: float = 0.0) -> torch.Tensor:
    """LayerNorm(dropout(x) + residual) in x's dtype (fp32 statistics); fused on CUDA, eager elsewhere.

    dropout_p > 0 (training) drops elements of x with a mask drawn in the kernel. In eager mode its seed comes from
    torch's CPU generator (no device work), so torch.manual_seed makes it reproducible; the mask differs from
    F.dropout's for that seed. Inside torch.compile the seed is drawn on the device, so a graph replays with a
    fresh mask each time and nothing waits for the host.
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
    if torch.compiler.is_compiling():  # one opaque node in the graph
        seed = torch.randint(0, 2 ** 31 - 1, (1,), device=x.device) if dropout_p > 0.0 else None
        return _add_ln_fwd(x, residual, weight, bias, eps, dropout_p, seed)[0]
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item()) if dropout_p > 0.0 else 0  # CPU generator: no sync
    return AddLayerNormFunction.apply(x, residual, weight, bias, eps, dropout_p, seed)
