"""FlashAttention (forward and backward) in Triton on unpadded tokens, with ALiBi computed inside the kernel.

    varlen_attention(q, k, v, cu_seqlens, max_seqlen, alibi_slopes=None, softmax_scale=None) -> out
    varlen_attention_qkvpacked(qkv, cu_seqlens, max_seqlen, alibi_slopes=None, softmax_scale=None) -> out

q, k, v, out: [T, heads, head_dim] (fp16 or bf16; head_dim 32, 64 or 128; the last dim contiguous, the token and
head strides free, so views of a fused QKV projection go in without a copy; qkv: [T, 3, heads, head_dim], whose
gradient then comes back as one tensor). cu_seqlens: int32 [B + 1].
max_seqlen: python int (sizes the grid without a device sync). alibi_slopes: fp32 [heads] or None; head h adds
-slope_h * |i - j| to its scores (MosaicBERT's symmetric, non-causal ALiBi). Attention dropout is NOT supported:
MosaicBERT trains with attention dropout 0.0, so the kernels compute exact softmax attention only.

Algorithm (FlashAttention-2): each program owns a block of queries of one sequence and head and streams the
keys of that sequence only -- tokens of other sequences are never loaded, so there is no padding work and no
document mask. The forward keeps the row max and sum online (exp2 domain) and stores the log-sum-exp (fp32) for
the backward. The backward is one launch that recomputes probabilities block by block: its key-block programs
accumulate dK, dV over the query blocks, its query-block programs accumulate dQ over the key blocks (no atomics,
deterministic), and each recomputes delta = rowsum(dO * O) for the query rows it visits instead of reading it
from a preprocess launch. Launch count matters here: at BERT sizes a layer's attention runs in ~100 us of GPU
time, so host-side overhead per launch is a real share of the step.

Under TRITON_INTERPRET=1 (CPU tests) the launchers upcast operands to fp32, since the interpreter's bf16 dot is
not exact, and use small fixed blocks.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch

from megabert.ops import triton_interpreting
from megabert.ops.attention import varlen_attention_reference

try:
    import triton
    import triton.language as tl
except ImportError:  # the module still imports; is_available() says False
    triton = None
    tl = None

SUPPORTED_HEAD_DIMS = (32, 64, 128)
LOG2E = 1.4426950408889634

__all__ = ["is_available", "varlen_attention", "varlen_attention_qkvpacked", "varlen_attention_reference",
           "SUPPORTED_HEAD_DIMS"]


# ---------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _scores(q, k, slope, offs_m, offs_n, seqlen, qk_scale, HAS_ALIBI: tl.constexpr):
        """Scores in the log2 domain for a [BLOCK_M, BLOCK_N] tile; keys past the sequence end get -inf."""
        s = tl.dot(q, tl.trans(k)) * qk_scale
        if HAS_ALIBI:
            distance = tl.abs(offs_m[:, None] - offs_n[None, :]).to(tl.float32)
            s = s - slope * distance
        return tl.where(offs_n[None, :] < seqlen, s, float("-inf"))

    @triton.jit
    def _flash_attn_fwd_kernel(Q, K, V, O, LSE, CU, SLOPES, qk_scale,
                    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                    stride_lh, seq_bucket,
                    HAS_ALIBI: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
        start_m = tl.program_id(0)
        seq = tl.program_id(1)
        head = tl.program_id(2)
        first = tl.load(CU + seq)
        seqlen = tl.load(CU + seq + 1) - first
        if start_m * BLOCK_M >= seqlen:
            return
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < seqlen
        q = tl.load(Q + (first + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        slope = 0.0
        if HAS_ALIBI:
            slope = tl.load(SLOPES + head) * 1.4426950408889634  # log2 domain
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        k_ptrs = K + first * stride_kt + head * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = V + first * stride_vt + head * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :]
        for start_n in range(0, seqlen, BLOCK_N):
            cols = start_n + offs_n
            col_ok = cols < seqlen
            k = tl.load(k_ptrs + start_n * stride_kt, mask=col_ok[:, None], other=0.0)
            v = tl.load(v_ptrs + start_n * stride_vt, mask=col_ok[:, None], other=0.0)
            s = _scores(q, k, slope, offs_m, cols, seqlen, qk_scale, HAS_ALIBI)
            m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: column 0 of every sequence is real
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        acc = acc / l_i[:, None]
        tl.store(O + (first + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
                 acc.to(O.dtype.element_ty), mask=row_ok[:, None])
        tl.store(LSE + head * stride_lh + first + offs_m, m_i + tl.log2(l_i), mask=row_ok)

    @triton.jit
    def _bwd_dkdv(Q, K, V, O, DO, LSE, DK, DV, first, seqlen, head, start_n, slope, qk_scale, sm_scale,
                  stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                  stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_lh,
                  HAS_ALIBI: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Key block start_n: dV = P^T dO and dK = scale * dS^T Q, accumulated over all query blocks."""
        offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        col_ok = offs_n < seqlen
        k = tl.load(K + (first + offs_n)[:, None] * stride_kt + head * stride_kh + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        v = tl.load(V + (first + offs_n)[:, None] * stride_vt + head * stride_vh + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        q_ptrs = Q + first * stride_qt + head * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :]
        o_ptrs = O + first * stride_ot + head * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
        do_ptrs = DO + first * stride_dot + head * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :]
        lse_ptrs = LSE + head * stride_lh + first + offs_m
        for start_m in range(0, seqlen, BLOCK_M):
            rows = start_m + offs_m
            row_ok = rows < seqlen
            q = tl.load(q_ptrs + start_m * stride_qt, mask=row_ok[:, None], other=0.0)
            do = tl.load(do_ptrs + start_m * stride_dot, mask=row_ok[:, None], other=0.0)
            o = tl.load(o_ptrs + start_m * stride_ot, mask=row_ok[:, None], other=0.0)
            delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # rowsum(dO * O), recomputed per block
            lse = tl.load(lse_ptrs + start_m, mask=row_ok, other=0.0)
            s = _scores(q, k, slope, rows, offs_n, seqlen, qk_scale, HAS_ALIBI)  # [BLOCK_M, BLOCK_N]
            p = tl.where(row_ok[:, None], tl.exp2(s - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
        dk = dk * sm_scale
        tl.store(DK + (first + offs_n)[:, None] * stride_dkt + head * stride_dkh + offs_d[None, :],
                 dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
        tl.store(DV + (first + offs_n)[:, None] * stride_dvt + head * stride_dvh + offs_d[None, :],
                 dv.to(DV.dtype.element_ty), mask=col_ok[:, None])

    @triton.jit
    def _bwd_dq(Q, K, V, O, DO, LSE, DQ, first, seqlen, head, start_m, slope, qk_scale, sm_scale,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                stride_dot, stride_doh, stride_dqt, stride_dqh, stride_lh,
                HAS_ALIBI: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Query block start_m: dQ = scale * dS K, accumulated over all key blocks."""
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < seqlen
        q = tl.load(Q + (first + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + (first + offs_m)[:, None] * stride_dot + head * stride_doh + offs_d[None, :],
                     mask=row_ok[:, None], other=0.0)
        o = tl.load(O + (first + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        lse = tl.load(LSE + head * stride_lh + first + offs_m, mask=row_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        k_ptrs = K + first * stride_kt + head * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = V + first * stride_vt + head * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :]
        for start_n in range(0, seqlen, BLOCK_N):
            cols = start_n + offs_n
            col_ok = cols < seqlen
            k = tl.load(k_ptrs + start_n * stride_kt, mask=col_ok[:, None], other=0.0)
            v = tl.load(v_ptrs + start_n * stride_vt, mask=col_ok[:, None], other=0.0)
            s = _scores(q, k, slope, offs_m, cols, seqlen, qk_scale, HAS_ALIBI)
            p = tl.exp2(s - lse[:, None])  # masked keys: exp2(-inf) = 0
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)
        dq = dq * sm_scale
        tl.store(DQ + (first + offs_m)[:, None] * stride_dqt + head * stride_dqh + offs_d[None, :],
                 dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])

    @triton.jit
    def _flash_attn_bwd_kernel(Q, K, V, O, DO, LSE, DQ, DK, DV, CU, SLOPES, qk_scale, sm_scale,
                    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                    stride_dot, stride_doh, stride_dqt, stride_dqh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
                    stride_lh, max_seqlen, seq_bucket,
                    HAS_ALIBI: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
        """One launch for the whole backward. Grid axis 0 = key blocks (dK, dV programs) then query blocks
        (dQ programs); each computes delta = rowsum(dO * O) itself, so there is no preprocess launch."""
        pid = tl.program_id(0)
        seq = tl.program_id(1)
        head = tl.program_id(2)
        first = tl.load(CU + seq)
        seqlen = tl.load(CU + seq + 1) - first
        slope = 0.0
        if HAS_ALIBI:
            slope = tl.load(SLOPES + head) * 1.4426950408889634
        key_blocks = tl.cdiv(max_seqlen, BLOCK_N)
        if pid < key_blocks:
            if pid * BLOCK_N < seqlen:
                _bwd_dkdv(Q, K, V, O, DO, LSE, DK, DV, first, seqlen, head, pid, slope, qk_scale, sm_scale,
                          stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                          stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_lh,
                          HAS_ALIBI, HEAD_DIM, BLOCK_M, BLOCK_N)
        else:
            start_m = pid - key_blocks
            if start_m * BLOCK_M < seqlen:
                _bwd_dq(Q, K, V, O, DO, LSE, DQ, first, seqlen, head, start_m, slope, qk_scale, sm_scale,
                        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                        stride_dot, stride_doh, stride_dqt, stride_dqh, stride_lh,
                        HAS_ALIBI, HEAD_DIM, BLOCK_M, BLOCK_N)

    # Optional autotuned variants (MEGABERT_TRITON_AUTOTUNE=1): keyed on head_dim and the power-of-two bucket of
    # max_seqlen (not max_seqlen itself, which changes every batch). Off by default: tuning compiles every
    # candidate on first use, and the fixed table below holds the configs it picked on an H200.
    def _configs(shapes: list[tuple[int, int, int, int]]) -> list:
        return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]

    _KEY = ["HEAD_DIM", "seq_bucket", "HAS_ALIBI"]
    _fwd_tuned = triton.autotune(_configs([(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3),
                                           (128, 32, 4, 3)]), key=_KEY)(_flash_attn_fwd_kernel)
    _bwd_tuned = triton.autotune(_configs([(64, 64, 4, 3), (64, 64, 8, 2), (32, 64, 4, 3), (64, 32, 4, 3),
                                           (128, 64, 8, 2)]), key=_KEY)(_flash_attn_bwd_kernel)


# ---------------------------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------------------------

_INTERPRETER_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}

# (kernel, head_dim) -> launch config (BLOCK_M, BLOCK_N, num_warps, num_stages). The forward's entries for
# head_dim 64 are what the autotuner picked on an H200 for c4-128 and c4-512 batches (docs/BENCHMARKS.md).
_FIXED_CONFIGS = {
    ("fwd", 32): (64, 64, 4, 3), ("fwd", 64): (64, 64, 4, 3), ("fwd", 128): (64, 64, 4, 3),
    ("bwd", 32): (64, 64, 4, 3), ("bwd", 64): (64, 64, 4, 3), ("bwd", 128): (64, 64, 8, 2),
}


def _autotuning() -> bool:
    return os.environ.get("MEGABERT_TRITON_AUTOTUNE", "0") == "1"


def _launch(kernel_name: str, fixed, tuned, head_dim: int, grid_axis0, batch: int, heads: int, args: tuple,
            meta: dict) -> None:
    """Launches one kernel: small fixed blocks in the interpreter, autotuned on request, else the fixed table.

    grid_axis0(blocks) -> the number of programs along the sequence axis for a {BLOCK_M, BLOCK_N} choice."""
    if triton_interpreting():
        fixed[(grid_axis0(_INTERPRETER_BLOCKS), batch, heads)](*args, **meta, **_INTERPRETER_BLOCKS)
    elif _autotuning():
        tuned[lambda m: (grid_axis0(m), batch, heads)](*args, **meta)
    else:
        block_m, block_n, warps, stages = _FIXED_CONFIGS[(kernel_name, head_dim)]
        blocks = {"BLOCK_M": block_m, "BLOCK_N": block_n}
        fixed[(grid_axis0(blocks), batch, heads)](*args, **meta, **blocks, num_warps=warps, num_stages=stages)


def tuned_configs() -> dict[str, dict[str, str]]:
    """The configs the autotuner picked so far, per kernel and tuning key (for benchmark logs)."""
    if triton is None:
        return {}
    kernels = (("fwd", _fwd_tuned), ("bwd", _bwd_tuned))
    return {name: {str(key): str(cfg) for key, cfg in getattr(k, "cache", {}).items()} for name, k in kernels}


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must all be [T, heads, head_dim]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {q.shape[-1]} is not supported by the Triton kernel; use one of "
                         f"{SUPPORTED_HEAD_DIMS} or attention_backend 'sdpa'")
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1:
        raise ValueError(f"cu_seqlens must be a 1-d int32 tensor, got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")


def _prepare(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Last dim contiguous; fp32 under the interpreter (its bf16/fp16 dot is not exact).

    The kernels index tokens with 32-bit offsets (token x stride); a batch past that range is refused with a
    clear error rather than read out of bounds. The gradient buffer [T, 3, heads, head_dim] is the largest."""
    tensors = tuple(x if x.stride(-1) == 1 else x.contiguous() for x in tensors)
    total, heads, head_dim = tensors[0].shape
    largest = max([3 * heads * head_dim] + [x.stride(0) for x in tensors]) * total
    if largest >= 2 ** 31:
        raise ValueError(f"{total} tokens x {heads} heads x {head_dim} exceed the Triton attention kernel's 32-bit "
                         f"offsets; use a micro-batch of fewer tokens (or attention_backend 'sdpa')")
    if triton_interpreting():
        tensors = tuple(x.float() for x in tensors)
    return tensors


def _seq_bucket(max_seqlen: int) -> int:
    return triton.next_power_of_2(max(int(max_seqlen), 16))


def flash_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
              alibi_slopes: Optional[torch.Tensor], softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns out [T, heads, head_dim] (q's dtype) and the log2-sum-exp lse [heads, T] (fp32)."""
    dtype = q.dtype
    q, k, v = _prepare((q, k, v))
    total, heads, head_dim = q.shape
    out = torch.empty(total, heads, head_dim, dtype=q.dtype, device=q.device)
    lse = torch.empty(heads, total, dtype=torch.float32, device=q.device)
    batch = cu_seqlens.numel() - 1
    if total == 0 or batch == 0 or max_seqlen == 0:
        return out.to(dtype), lse
    has_alibi = alibi_slopes is not None
    slopes = alibi_slopes if has_alibi else lse  # dummy pointer when unused
    args = (q, k, v, out, lse, cu_seqlens, slopes, softmax_scale * LOG2E,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0),
            out.stride(1), lse.stride(0), _seq_bucket(max_seqlen))
    _launch("fwd", _flash_attn_fwd_kernel, _fwd_tuned, head_dim, lambda m: triton.cdiv(max_seqlen, m["BLOCK_M"]),
            batch, heads, args, dict(HAS_ALIBI=has_alibi, HEAD_DIM=head_dim))
    return out.to(dtype), lse


def flash_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
              lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, alibi_slopes: Optional[torch.Tensor],
              softmax_scale: float) -> torch.Tensor:
    """Returns dqkv [T, 3, heads, head_dim] in q's dtype (dq, dk, dv = dqkv.unbind(1)). One kernel launch.

    One buffer, so a caller whose q, k, v are the slices of one packed projection gets its gradient without the
    copy that autograd's unbind/stack would make."""
    dtype = q.dtype
    grad_out, q, k, v, out = _prepare((grad_out, q, k, v, out))
    total, heads, head_dim = q.shape
    # dq, dk, dv as views of one [T, 3, heads, head_dim] buffer: one allocation instead of three.
    grads = torch.empty(total, 3, heads, head_dim, dtype=q.dtype, device=q.device)
    dq, dk, dv = grads.unbind(1)
    batch = cu_seqlens.numel() - 1
    if total == 0 or batch == 0 or max_seqlen == 0:
        return grads.zero_().to(dtype)
    has_alibi = alibi_slopes is not None
    slopes = alibi_slopes if has_alibi else lse
    args = (q, k, v, out, grad_out, lse, dq, dk, dv, cu_seqlens, slopes, softmax_scale * LOG2E, softmax_scale,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0),
            out.stride(1), grad_out.stride(0), grad_out.stride(1), dq.stride(0), dq.stride(1), dk.stride(0),
            dk.stride(1), dv.stride(0), dv.stride(1), lse.stride(0), max_seqlen, _seq_bucket(max_seqlen))
    _launch("bwd", _flash_attn_bwd_kernel, _bwd_tuned, head_dim,
            lambda m: triton.cdiv(max_seqlen, m["BLOCK_N"]) + triton.cdiv(max_seqlen, m["BLOCK_M"]), batch, heads,
            args, dict(HAS_ALIBI=has_alibi, HEAD_DIM=head_dim))
    return grads.to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# Autograd: a plain autograd.Function in eager mode (the cheapest dispatch), and the same launchers registered
# as torch custom ops with their own autograd for torch.compile, which keeps each launch as one opaque node.
# ---------------------------------------------------------------------------------------------------------------


class FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale):
        out, lse = flash_fwd(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, alibi_slopes)
        ctx.max_seqlen, ctx.softmax_scale = max_seqlen, softmax_scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, cu_seqlens, alibi_slopes = ctx.saved_tensors
        dq, dk, dv = flash_bwd(grad_out, q, k, v, out, lse, cu_seqlens, ctx.max_seqlen, alibi_slopes,
                               ctx.softmax_scale).unbind(1)
        return dq, dk, dv, None, None, None, None


class FlashAttentionQKVPackedFunction(torch.autograd.Function):
    """Takes the packed projection qkv [T, 3, heads, head_dim] and returns its gradient as one tensor."""

    @staticmethod
    def forward(ctx, qkv, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale):
        q, k, v = qkv.unbind(1)  # strided views [T, heads, head_dim]
        out, lse = flash_fwd(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale)
        ctx.save_for_backward(qkv, out, lse, cu_seqlens, alibi_slopes)
        ctx.max_seqlen, ctx.softmax_scale = max_seqlen, softmax_scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qkv, out, lse, cu_seqlens, alibi_slopes = ctx.saved_tensors
        q, k, v = qkv.unbind(1)
        dqkv = flash_bwd(grad_out, q, k, v, out, lse, cu_seqlens, ctx.max_seqlen, alibi_slopes, ctx.softmax_scale)
        return dqkv, None, None, None, None


@torch.library.custom_op("megabert::flash_attn_varlen_fwd", mutates_args=())
def _flash_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                  alibi_slopes: Optional[torch.Tensor], softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return flash_fwd(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale)


@_flash_fwd_op.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), q.new_empty(q.shape[1], q.shape[0],
                                                                              dtype=torch.float32)


@torch.library.custom_op("megabert::flash_attn_varlen_bwd", mutates_args=())
def _flash_bwd_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                  alibi_slopes: Optional[torch.Tensor], softmax_scale: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dqkv = flash_bwd(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale)
    return tuple(g.clone() for g in dqkv.unbind(1))  # custom ops may not return views of one buffer


@_flash_bwd_op.register_fake
def _(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale):
    return tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, alibi_slopes)
    ctx.max_seqlen = max_seqlen
    ctx.softmax_scale = softmax_scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens, alibi_slopes = ctx.saved_tensors
    dq, dk, dv = _flash_bwd_op(grad_out, q, k, v, out, lse, cu_seqlens, ctx.max_seqlen, alibi_slopes,
                               ctx.softmax_scale)
    return dq, dk, dv, None, None, None, None


_flash_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# The packed form as custom ops: the backward returns d(qkv) as the one buffer the kernel writes, so a compiled
# graph has no stack of dq, dk, dv either.
@torch.library.custom_op("megabert::flash_attn_varlen_qkvpacked_fwd", mutates_args=())
def _flash_packed_fwd_op(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                         alibi_slopes: Optional[torch.Tensor], softmax_scale: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = qkv.unbind(1)
    return flash_fwd(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale)


@_flash_packed_fwd_op.register_fake
def _(qkv, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale):
    total, _, heads, head_dim = qkv.shape
    return qkv.new_empty(total, heads, head_dim), qkv.new_empty(heads, total, dtype=torch.float32)


@torch.library.custom_op("megabert::flash_attn_varlen_qkvpacked_bwd", mutates_args=())
def _flash_packed_bwd_op(grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                         cu_seqlens: torch.Tensor, max_seqlen: int, alibi_slopes: Optional[torch.Tensor],
                         softmax_scale: float) -> torch.Tensor:
    q, k, v = qkv.unbind(1)
    return flash_bwd(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale)


@_flash_packed_bwd_op.register_fake
def _(grad_out, qkv, out, lse, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale):
    return torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)


def _packed_setup_context(ctx, inputs, output):
    qkv, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse, cu_seqlens, alibi_slopes)
    ctx.max_seqlen = max_seqlen
    ctx.softmax_scale = softmax_scale
    ctx.mark_non_differentiable(lse)


def _packed_backward(ctx, grad_out, grad_lse):
    qkv, out, lse, cu_seqlens, alibi_slopes = ctx.saved_tensors
    dqkv = _flash_packed_bwd_op(grad_out, qkv, out, lse, cu_seqlens, ctx.max_seqlen, alibi_slopes,
                                ctx.softmax_scale)
    return dqkv, None, None, None, None


_flash_packed_fwd_op.register_autograd(_packed_backward, setup_context=_packed_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# Functional API (the backend contract of megabert.ops.attention)
# ---------------------------------------------------------------------------------------------------------------


MIN_CAPABILITY = (8, 0)
"""Triton's supported NVIDIA GPUs. On older ones (V100, T4) it runs tl.dot on FMA units instead of tensor cores, and
the kernel has not been tested there, so 'auto' takes SDPA, which PyTorch builds for them."""


def runs_fast_on(capability: tuple[int, int]) -> bool:
    """Whether a GPU of this compute capability runs the kernels' matmuls on tensor cores."""
    return tuple(capability) >= MIN_CAPABILITY


_capabilities: dict[int, tuple[int, int]] = {}


def is_available(tensor: torch.Tensor) -> bool:
    """True for CUDA fp16/bf16 tensors whose last dim is a supported head_dim, on a GPU of compute capability 8.0 or
    newer, with Triton importable."""
    return (triton is not None and tensor.is_cuda and tensor.dtype in (torch.float16, torch.bfloat16)
            and tensor.shape[-1] in SUPPORTED_HEAD_DIMS
            and runs_fast_on(device_capability(tensor.device.index if tensor.device.index is not None
                                               else torch.cuda.current_device())))


@torch.compiler.assume_constant_result  # a constant inside a torch.compile trace, evaluated once when tracing
def device_capability(device_index: int) -> tuple[int, int]:
    """(major, minor) compute capability of CUDA device `device_index`, asked once per device (eager attention
    resolves its backend at every call)."""
    if device_index not in _capabilities:
        _capabilities[device_index] = tuple(torch.cuda.get_device_capability(device_index))
    return _capabilities[device_index]


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, alibi_slopes: Optional[torch.Tensor] = None,
                     softmax_scale: Optional[float] = None) -> torch.Tensor:
    """softmax(q k^T * scale - slope * |i - j|) v per sequence, differentiable in q, k and v.

    Shapes as in the module docstring. No attention dropout (MosaicBERT uses 0.0): use the 'sdpa' backend
    for dropout_p > 0.
    """
    if triton is None:
        raise RuntimeError("the Triton attention backend needs the `triton` package")
    _check_inputs(q, k, v, cu_seqlens)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    alibi_slopes = _fp32_slopes(alibi_slopes)
    if torch.compiler.is_compiling():  # max_seqlen may be symbolic there: no int(), no specialisation
        out, _ = _flash_fwd_op(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, scale)
        return out
    return FlashAttentionFunction.apply(q, k, v, cu_seqlens, int(max_seqlen), alibi_slopes, scale)


def varlen_attention_qkvpacked(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                               alibi_slopes: Optional[torch.Tensor] = None,
                               softmax_scale: Optional[float] = None) -> torch.Tensor:
    """varlen_attention on a packed qkv [T, 3, heads, head_dim] (the fused projection viewed as such).

    Same result; the backward writes d(qkv) as one tensor instead of dq, dk, dv that autograd would then stack
    into a fresh buffer (a full extra read and write of d(qkv) per layer).
    """
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"qkv must be [T, 3, heads, head_dim], got {tuple(qkv.shape)}")
    if triton is None:
        raise RuntimeError("the Triton attention backend needs the `triton` package")
    _check_inputs(*qkv.unbind(1), cu_seqlens)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(qkv.shape[-1])
    if torch.compiler.is_compiling():
        out, _ = _flash_packed_fwd_op(qkv, cu_seqlens, max_seqlen, _fp32_slopes(alibi_slopes), scale)
        return out
    return FlashAttentionQKVPackedFunction.apply(qkv, cu_seqlens, int(max_seqlen), _fp32_slopes(alibi_slopes), scale)


def _fp32_slopes(alibi_slopes: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if alibi_slopes is not None and (alibi_slopes.dtype != torch.float32 or not alibi_slopes.is_contiguous()):
        return alibi_slopes.float().contiguous()
    return alibi_slopes
