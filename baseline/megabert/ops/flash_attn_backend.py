"""The `flash_attn` package (Dao et al.) as an attention backend: its CUDA varlen kernel with ALiBi slopes.

flash-attn documents its ALiBi as "a bias of (-alibi_slope * |i + seqlen_k - seqlen_q - j|) is added to the
attention score of query i and key j". In self-attention every sequence has seqlen_q == seqlen_k, so with
causal=False that is exactly megabert's -slope * |i - j|: the slopes pass through unchanged (fp32, [heads]).
Attention dropout is not used (MosaicBERT trains with 0.0); the backend always passes dropout_p=0.0.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

try:  # optional dependency: `pip install flash-attn` on a CUDA machine
    from flash_attn import flash_attn_varlen_func, flash_attn_varlen_qkvpacked_func
except ImportError:  # also covers a flash-attn built against another torch (an ImportError from its .so)
    flash_attn_varlen_func = flash_attn_varlen_qkvpacked_func = None

SUPPORTED_HEAD_DIMS = tuple(range(8, 257, 8))


def is_available(tensor: torch.Tensor) -> bool:
    """True when flash-attn is importable and the tensor is CUDA fp16/bf16 with a head_dim it supports."""
    return (flash_attn_varlen_func is not None and tensor.is_cuda
            and tensor.dtype in (torch.float16, torch.bfloat16) and tensor.shape[-1] in SUPPORTED_HEAD_DIMS)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, alibi_slopes: Optional[torch.Tensor] = None,
                     softmax_scale: Optional[float] = None) -> torch.Tensor:
    """Non-causal varlen attention [T, heads, head_dim] -> [T, heads, head_dim]; no dropout."""
    if flash_attn_varlen_func is None:
        raise RuntimeError("the flash_attn backend needs the `flash-attn` package (pip install flash-attn)")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    slopes = alibi_slopes.to(device=q.device, dtype=torch.float32).contiguous() if alibi_slopes is not None else None
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p=0.0,
                                  softmax_scale=scale, causal=False, alibi_slopes=slopes)


def varlen_attention_qkvpacked(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                               alibi_slopes: Optional[torch.Tensor] = None,
                               softmax_scale: Optional[float] = None) -> torch.Tensor:
    """The same on qkv [T, 3, heads, head_dim]; flash-attn returns d(qkv) as one tensor."""
    if flash_attn_varlen_qkvpacked_func is None:
        raise RuntimeError("the flash_attn backend needs the `flash-attn` package (pip install flash-attn)")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(qkv.shape[-1])
    slopes = alibi_slopes.to(device=qkv.device, dtype=torch.float32).contiguous() if alibi_slopes is not None else None
    return flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=scale,
                                            causal=False, alibi_slopes=slopes)
