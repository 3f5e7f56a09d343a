"""Bidirectional attention with ALiBi on unpadded ("varlen") tokens, behind one interface.

    varlen_attention(q, k, v, cu_seqlens, max_seqlen, alibi_slopes=None, backend="auto") -> out
    varlen_attention_qkvpacked(qkv, cu_seqlens, max_seqlen, alibi_slopes=None, backend="auto") -> out

q, k, v, out: [T, heads, head_dim] -- the tokens of all sequences in the batch, concatenated, no padding.
qkv:          [T, 3, heads, head_dim] -- a fused projection; a backend with a packed variant returns its gradient
              as one tensor (no stack of dq, dk, dv).
cu_seqlens:   int32 [B + 1], cumulative sequence lengths (sequence b owns tokens cu_seqlens[b]:cu_seqlens[b+1]).
max_seqlen:   python int, the longest sequence (kernels size their grids from it without a device sync).
alibi_slopes: fp32 [heads] or None; adds -slope_h * |i - j| to the scores of head h.

Backends, fastest first (`auto` picks the first that runs on the tensors' device and dtype):
  flash_attn  the flash-attn package's varlen kernel with alibi_slopes (optional dependency, CUDA)
  triton      megabert's own Triton FlashAttention with ALiBi computed in the kernel (CUDA, compute capability
              8.0 or newer: Ampere, Hopper and later)
  sdpa        PyTorch scaled_dot_product_attention on a padded copy with an additive ALiBi + padding bias
  eager       the fp32 reference: softmax(q k^T * scale + bias) v, one sequence at a time

A backend module exposes `is_available(tensor) -> bool` and `varlen_attention(q, k, v, cu_seqlens, max_seqlen,
alibi_slopes, softmax_scale)`, and optionally `varlen_attention_qkvpacked(qkv, cu_seqlens, max_seqlen,
alibi_slopes, softmax_scale)`. The fused backends implement attention dropout 0.0 only: MosaicBERT uses none.
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from megabert.ops.alibi import alibi_bias
from megabert.ops.padding import pad_input, unpad_indices

log = logging.getLogger(__name__)

# name -> module implementing is_available / varlen_attention; imported lazily so a missing optional package
# (flash_attn, triton) only removes its backend.
_BACKEND_MODULES = {
    "flash_attn": "megabert.ops.flash_attn_backend",
    "triton": "megabert.ops.flash_attention_triton",
}
AUTO_ORDER = ("flash_attn", "triton", "sdpa", "eager")
_announced: set[str] = set()


# ---------------------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------------------


def varlen_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                               max_seqlen: int, alibi_slopes: Optional[torch.Tensor] = None,
                               softmax_scale: Optional[float] = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Eager fp32 attention, one sequence at a time. Any device; the ground truth for every kernel."""
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (x[start:end].transpose(0, 1).float() for x in (q, k, v))  # [heads, s, head_dim]
        scores = qs @ ks.transpose(-1, -2) * scale  # [heads, s, s]
        if alibi_slopes is not None:
            scores = scores + alibi_bias(alibi_slopes, end - start, q.device)
        probs = scores.softmax(dim=-1)
        if dropout_p > 0.0:
            probs = F.dropout(probs, p=dropout_p)
        out[start:end] = (probs @ vs).transpose(0, 1).to(q.dtype)  # [s, heads, head_dim]
    return out


# ---------------------------------------------------------------------------------------------------------------
# SDPA fallback (CPU and any GPU): pad, add bias, unpad
# ---------------------------------------------------------------------------------------------------------------


def padded_attention_bias(slopes: Optional[torch.Tensor], key_padding_mask: torch.Tensor,
                          dtype: torch.dtype) -> torch.Tensor:
    """Additive bias [B, heads or 1, S, S]: ALiBi plus a large negative value on padded keys."""
    batch, seq = key_padding_mask.shape
    min_value = torch.finfo(dtype).min
    pad_bias = torch.zeros(batch, 1, 1, seq, dtype=torch.float32, device=key_padding_mask.device)
    pad_bias = pad_bias.masked_fill(~key_padding_mask.bool()[:, None, None, :], min_value)  # [B, 1, 1, S]
    if slopes is None:
        return pad_bias.expand(batch, 1, seq, seq).to(dtype)
    bias = alibi_bias(slopes, seq, key_padding_mask.device)[None] + pad_bias  # [B, heads, S, S]
    return bias.clamp(min=min_value).to(dtype)


def padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor,
                     alibi_slopes: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                     softmax_scale: Optional[float] = None) -> torch.Tensor:
    """SDPA on padded tensors [B, heads, S, head_dim]; key_padding_mask [B, S] is True on real tokens."""
    bias = padded_attention_bias(alibi_slopes, key_padding_mask, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=softmax_scale)


def varlen_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                          max_seqlen: int, alibi_slopes: Optional[torch.Tensor] = None,
                          softmax_scale: Optional[float] = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Varlen attention through padded SDPA: correct everywhere, but pays for the padding it re-creates."""
    batch = cu_seqlens.numel() - 1
    indices = unpad_indices(cu_seqlens, max_seqlen, q.shape[0])  # [T] flat positions in the [B * S] grid
    heads, head_dim = q.shape[1], q.shape[2]

    def to_padded(x: torch.Tensor) -> torch.Tensor:
        padded = pad_input(x.reshape(x.shape[0], heads * head_dim), indices, batch, max_seqlen)  # [B, S, h*d]
        return padded.view(batch, max_seqlen, heads, head_dim).transpose(1, 2)  # [B, heads, S, head_dim]

    mask = torch.zeros(batch * max_seqlen, dtype=torch.bool, device=q.device)
    mask[indices] = True
    out = padded_attention(to_padded(q), to_padded(k), to_padded(v), mask.view(batch, max_seqlen), alibi_slopes,
                           dropout_p, softmax_scale)  # [B, heads, S, head_dim]
    out = out.transpose(1, 2).reshape(batch * max_seqlen, heads, head_dim)  # [B * S, heads, head_dim]
    return out[indices]


# ---------------------------------------------------------------------------------------------------------------
# Backend choice
# ---------------------------------------------------------------------------------------------------------------


def _import_optional(path: str):
    try:
        return importlib.import_module(path)
    except ImportError:
        return None


_loaded: dict[str, object] = {}


def _load(name: str):
    """The backend module, or None. Imported once at the end of this file (not lazily), so torch.compile never
    traces importlib (a graph break)."""
    if name not in _loaded and name in _BACKEND_MODULES:
        _loaded[name] = _import_optional(_BACKEND_MODULES[name])
    return _loaded.get(name)


def backend_available(name: str, example: torch.Tensor) -> bool:
    """Whether backend `name` can run on tensors like `example` (device, dtype)."""
    if name in ("sdpa", "eager"):
        return True
    module = _load(name)
    return module is not None and bool(module.is_available(example))


def resolve_backend(requested: str, example: torch.Tensor) -> str:
    """The backend that will run: `requested`, or for 'auto' the fastest available one. Logs the choice once."""
    if requested == "auto":
        chosen = next(name for name in AUTO_ORDER if backend_available(name, example))
    elif requested in AUTO_ORDER:
        if not backend_available(requested, example):
            raise RuntimeError(
                f"attention backend {requested!r} cannot run on {example.device.type} / {example.dtype} "
                f"(is its package installed? does the GPU meet its needs, listed in megabert/ops/attention.py?); "
                f"use model.attention_backend 'auto' or 'sdpa'")
        chosen = requested
    else:
        raise ValueError(f"unknown attention backend {requested!r}; choose from auto, {', '.join(AUTO_ORDER)}")
    key = f"{requested}->{chosen}@{example.device.type}"
    if not torch.compiler.is_compiling() and key not in _announced:  # logging inside a traced graph would break it
        _announced.add(key)
        log.info("attention backend: %s (requested %s, device %s)", chosen, requested, example.device.type)
    return chosen


def _backend_fn(name: str) -> Callable:
    if name == "sdpa":
        return varlen_attention_sdpa
    if name == "eager":
        return varlen_attention_reference
    return _load(name).varlen_attention  # type: ignore[union-attr]


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                     alibi_slopes: Optional[torch.Tensor] = None, backend: str = "auto",
                     softmax_scale: Optional[float] = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention over unpadded tokens; see the module docstring for shapes. dropout_p > 0 needs sdpa or eager."""
    if dropout_p > 0.0:
        if backend not in ("sdpa", "eager"):
            backend = "sdpa"
        return _backend_fn(backend)(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale, dropout_p)
    name = resolve_backend(backend, q)
    return _backend_fn(name)(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale)


def varlen_attention_qkvpacked(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                               alibi_slopes: Optional[torch.Tensor] = None, backend: str = "auto",
                               softmax_scale: Optional[float] = None, dropout_p: float = 0.0) -> torch.Tensor:
    """varlen_attention on qkv [T, 3, heads, head_dim]; uses the backend's packed variant where it has one."""
    q, k, v = qkv.unbind(1)  # each [T, heads, head_dim]
    if dropout_p == 0.0:
        module = _load(resolve_backend(backend, q))
        packed = getattr(module, "varlen_attention_qkvpacked", None) if module is not None else None
        if packed is not None:
            return packed(qkv, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale)
    return varlen_attention(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, backend, softmax_scale, dropout_p)


# Import the optional backends now (after everything they import from this module is defined): a missing package
# only removes its backend, and no import happens later inside a torch.compile trace.
for _name in _BACKEND_MODULES:
    _load(_name)
