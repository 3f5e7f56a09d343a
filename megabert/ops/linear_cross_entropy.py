"""Linear layer + cross entropy in one pass over row chunks, never holding the [N, V] logits.

    linear_cross_entropy(x, weight, bias, target, ignore_index=-100, predictions=False) -> (loss, predictions)

x: [N, H] (the MLM head's rows), weight: [V, H] (the tied decoder), bias: [V] or None, target: int64 [N] with
`ignore_index` on rows that carry no label. loss: mean cross entropy (fp32) over the labelled rows, equal to
F.cross_entropy(F.linear(x, weight, bias).float(), target, ignore_index=ignore_index); predictions: the argmax of
each row's logits (int64 [N]) when asked for, else None.

Why: the MLM head's logits are [masked tokens, 30528]. The reference path writes them in bf16, again in fp32 for
the loss, keeps the fp32 log-softmax for the backward and writes an fp32 and a bf16 gradient of the same size:
about 12 bytes per logit (3.3 GB for a base c4-128 micro-batch) of memory traffic and of peak memory. Here each
chunk of rows computes its logits, its share of the loss and -- when a gradient is needed -- the gradient of the
logits, which it turns at once into the chunk's dx and its contributions to dweight and dbias (the approach of
Liger-Kernel's fused linear cross entropy: the gradients are computed in the forward and the backward only scales
them by the incoming gradient). Only one chunk's logits exist at a time.

Per chunk, on CUDA (and under the Triton interpreter), one Triton kernel reads the bf16 logits, computes each row's
log-sum-exp, loss and argmax, and overwrites the logits with their gradient (softmax - one-hot) / labelled rows:
no fp32 copy at all; elsewhere torch ops do it. The whole chunk loop is one custom op, so torch.compile keeps it
as it is: one opaque node for any row count (no graph per chunk count, no guard on the rows).
Dtypes follow F.linear under autocast: the logits and their gradient are in the autocast dtype (bf16), the loss
and its reductions in fp32; dweight and dbias are accumulated in fp32 and returned in the parameters' dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from megabert.ops import fused_ops_enabled, triton_interpreting

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = None

CHUNK_ROWS = 4096
"""Rows per chunk: large enough for efficient GEMMs, small enough that one chunk's bf16 logits stay
at ~250 MB for a 30528-entry vocabulary."""


# ---------------------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------------------


def linear_cross_entropy_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                   target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """What the fused op computes: the full logits, then the fp32 cross entropy."""
    return F.cross_entropy(F.linear(x, weight, bias).float(), target, ignore_index=ignore_index)


# ---------------------------------------------------------------------------------------------------------------
# Kernel: per-row loss, argmax and (in place) logits gradient of one chunk
# ---------------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _cross_entropy_rows_kernel(LOGITS, TARGET, LOSS, PRED, SCALE, n_cols, stride_row, ignore_index,
                                   HAS_GRAD: tl.constexpr, HAS_PRED: tl.constexpr, BLOCK: tl.constexpr):
        """One program per row. Pass 1: online max and sum of exp (and the argmax, first index on ties) over the
        row in blocks; pass 2 (HAS_GRAD): logits <- (softmax - one-hot(target)) * SCALE, in the logits' dtype.
        A row whose target is ignore_index gets loss 0 and gradient 0."""
        row = tl.program_id(0).to(tl.int64)
        base = LOGITS + row * stride_row
        target = tl.load(TARGET + row)
        valid = target != ignore_index
        m = float("-inf")
        s = 0.0
        best = float("-inf")
        best_index = 0
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            z = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
            block_max = tl.max(z, 0)
            if HAS_PRED:
                block_index = tl.argmax(z, 0) + start
                best_index = tl.where(block_max > best, block_index, best_index)
                best = tl.maximum(best, block_max)
            m_new = tl.maximum(m, block_max)
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), 0)
            m = m_new
        lse = m + tl.log(s)
        safe_target = tl.where(valid, target, 0)
        z_target = tl.load(base + safe_target).to(tl.float32)
        tl.store(LOSS + row, tl.where(valid, lse - z_target, 0.0))
        if HAS_PRED:
            tl.store(PRED + row, best_index.to(tl.int64))
        if HAS_GRAD:
            scale = tl.where(valid, tl.load(SCALE), 0.0)
            for start in range(0, n_cols, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                ok = cols < n_cols
                z = tl.load(base + cols, mask=ok, other=0.0).to(tl.float32)
                p = tl.exp(z - lse) - tl.where(cols == safe_target, 1.0, 0.0)
                tl.store(base + cols, (p * scale).to(LOGITS.dtype.element_ty), mask=ok)


def _one_hot(target: torch.Tensor, classes: int) -> torch.Tensor:
    """fp32 [c, classes] one-hot rows, by comparison (F.one_hot checks its input's range on the host)."""
    return (torch.arange(classes, device=target.device)[None, :] == target[:, None]).to(torch.float32)


def _kernel_available(tensor: torch.Tensor) -> bool:
    """The Triton kernel on CUDA (and under the interpreter); torch ops with MEGABERT_FUSED_OPS=0."""
    return (fused_ops_enabled() and triton is not None and (tensor.is_cuda or triton_interpreting())
            and not torch.compiler.is_compiling())


def cross_entropy_rows(logits: torch.Tensor, target: torch.Tensor, scale: torch.Tensor, ignore_index: int,
                       grad: bool, predictions: bool, block: Optional[int] = None
                       ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-row loss (fp32 [c]) and argmax (int64 [c] or None) of logits [c, V]; with `grad`, logits is overwritten
    by (softmax - one-hot) * scale (scale: fp32 one-element tensor, 1 / labelled rows of the whole batch)."""
    rows, cols = logits.shape
    loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
    pred = torch.empty(rows, dtype=torch.int64, device=logits.device) if predictions else None
    if rows == 0:
        return loss, pred
    if _kernel_available(logits):
        if triton_interpreting():  # the interpreter works in numpy: fp32 in, fp32 out
            work = logits.float()
        else:
            work = logits
        block = block or min(triton.next_power_of_2(cols), 4096)
        _cross_entropy_rows_kernel[(rows,)](work, target, loss, pred if pred is not None else loss, scale, cols,
                                            work.stride(0), ignore_index, HAS_GRAD=grad, HAS_PRED=predictions,
                                            BLOCK=block, num_warps=8 if block >= 2048 else 4)
        if work is not logits and grad:
            logits.copy_(work)
        return loss, pred
    z = logits.float()  # [c, V]
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    lse = torch.logsumexp(z, dim=-1)  # [c]
    loss = torch.where(valid, lse - z.gather(1, safe_target[:, None])[:, 0], torch.zeros_like(lse))
    if predictions:
        pred = logits.argmax(-1)
    if grad:
        g = torch.exp(z - lse[:, None]) - _one_hot(safe_target, cols)  # [c, V]
        g = g * torch.where(valid, scale, torch.zeros_like(scale))[:, None]
        logits.copy_(g)
    return loss, pred


# ---------------------------------------------------------------------------------------------------------------
# Chunked forward (with the gradients) and its custom op, whose backward only scales the gradients
# ---------------------------------------------------------------------------------------------------------------


_fp32_output_gemm = {"cuda": True}  # cleared at the first failure: an older torch without out_dtype


def _accumulate_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32) += a @ b with a, b in a 16-bit dtype: one GEMM with an fp32 output where the device has it."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    if _fp32_output_gemm.get(acc.device.type, False):
        try:
            torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            return
        except (RuntimeError, TypeError):
            _fp32_output_gemm[acc.device.type] = False
    acc.add_(a @ b)


def _chunk_bounds(rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_rows, rows)) for start in range(0, rows, chunk_rows)]


def _fused_eager(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], target: torch.Tensor,
                 ignore_index: int, grad: bool, predictions: bool, chunk_rows: int):
    """Loss, predictions and (with `grad`) dx, dweight, dbias, one chunk of rows at a time. x is in the compute
    dtype; weight and bias are cast to it once."""
    rows, vocab = x.shape[0], weight.shape[0]
    w = weight.to(x.dtype)
    b = bias.to(x.dtype) if bias is not None else None
    n_valid = (target != ignore_index).sum()  # device scalar: nothing waits for it
    scale = 1.0 / n_valid.clamp(min=1).to(torch.float32).reshape(1)
    loss_rows = torch.empty(rows, dtype=torch.float32, device=x.device)
    pred = torch.empty(rows, dtype=torch.int64, device=x.device) if predictions else None
    dx = torch.empty_like(x) if grad else None
    dw = torch.zeros(vocab, x.shape[1], dtype=torch.float32, device=x.device) if grad else None
    db = torch.zeros(vocab, dtype=torch.float32, device=x.device) if grad and bias is not None else None
    for start, end in _chunk_bounds(rows, chunk_rows):
        xc = x[start:end]  # [c, H]
        logits = torch.addmm(b, xc, w.t()) if b is not None else xc @ w.t()  # [c, V], compute dtype
        loss_c, pred_c = cross_entropy_rows(logits, target[start:end], scale, ignore_index, grad, predictions)
        loss_rows[start:end] = loss_c
        if pred is not None:
            pred[start:end] = pred_c
        if grad:  # logits now holds d(loss)/d(logits) of these rows
            torch.mm(logits, w, out=dx[start:end])  # [c, H]
            _accumulate_matmul(dw, logits.t(), xc)  # [V, H]
            if db is not None:
                db += logits.sum(0, dtype=torch.float32)
    loss = loss_rows.sum() / n_valid  # NaN without a labelled row, as F.cross_entropy
    return loss, pred, dx, dw, db


@torch.library.custom_op("megabert::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                             target: torch.Tensor, ignore_index: int, grad: bool, predictions: bool,
                             chunk_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                       torch.Tensor]:
    """loss, predictions, dx, dweight, dbias; what is not asked for comes back as an empty tensor. One opaque node
    under torch.compile: its chunk loop then needs no fixed chunk count and no guard on the row count."""
    loss, pred, dx, dw, db = _fused_eager(x, weight, bias, target, ignore_index, grad, predictions, chunk_rows)
    empty = lambda dtype=x.dtype: x.new_empty(0, dtype=dtype)  # a new one each: outputs may not alias
    return (loss, pred if pred is not None else empty(torch.int64), dx if dx is not None else empty(),
            dw.to(weight.dtype) if dw is not None else empty(), db.to(bias.dtype) if db is not None else empty())


@_linear_cross_entropy_op.register_fake
def _(x, weight, bias, target, ignore_index, grad, predictions, chunk_rows):
    rows = x.shape[0]
    empty = lambda dtype=x.dtype: x.new_empty(0, dtype=dtype)
    return (x.new_empty((), dtype=torch.float32),
            x.new_empty(rows, dtype=torch.int64) if predictions else empty(torch.int64),
            torch.empty_like(x) if grad else empty(), torch.empty_like(weight) if grad else empty(),
            torch.empty_like(bias) if grad and bias is not None else empty())


def _setup_context(ctx, inputs, output):
    _, _, dx, dw, db = output
    ctx.save_for_backward(dx, dw, db)
    ctx.has_bias = inputs[2] is not None
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, grad_loss, grad_pred, grad_dx, grad_dw, grad_db):
    dx, dw, db = ctx.saved_tensors
    return ((dx * grad_loss).to(dx.dtype), (dw * grad_loss).to(dw.dtype),
            (db * grad_loss).to(db.dtype) if ctx.has_bias else None, None, None, None, None, None)


_linear_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# Functional API
# ---------------------------------------------------------------------------------------------------------------


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype F.linear would compute in here: autocast's where it is on, else x's."""
    device_type = x.device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], target: torch.Tensor,
                         ignore_index: int = -100, predictions: bool = False,
                         chunk_rows: int = CHUNK_ROWS) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Mean cross entropy of F.linear(x, weight, bias) against target, and optionally each row's argmax; see the
    module docstring. Differentiable in x, weight and bias; the gradients are computed only when one is needed."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1] or target.shape != x.shape[:1]:
        raise ValueError(f"linear_cross_entropy needs x [N, H], weight [V, H], target [N]; got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(target.shape)}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    x = x.to(compute_dtype(x))
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    with torch.autocast(x.device.type, enabled=False):  # dtypes are explicit inside
        loss, pred, *_ = _linear_cross_entropy_op(x, weight, bias, target, ignore_index, needs_grad, predictions,
                                                  chunk_rows)
    return loss, (pred if predictions else None)


__all__ = ["linear_cross_entropy", "linear_cross_entropy_reference", "cross_entropy_rows", "compute_dtype",
           "CHUNK_ROWS"]
