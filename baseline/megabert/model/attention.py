"""Self-attention with a fused QKV projection and ALiBi, on unpadded or padded tokens."""

from __future__ import annotations

import torch
import torch.nn as nn

from megabert.config import ModelConfig
from megabert.model.layout import TokenLayout
from megabert.ops.alibi import alibi_slopes
from megabert.ops.attention import padded_attention, varlen_attention_qkvpacked


class SelfAttention(nn.Module):
    """qkv: Linear(H -> 3H) with output rows laid out [q | k | v], each [heads, head_dim].

    The number of heads is read from the weights at run time (qkv rows / 3 / head_dim), so a tensor-parallel
    shard that keeps a subset of heads -- and the matching slice of `alibi_slopes` -- runs this code unchanged.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.backend = cfg.attention_backend
        self.attention_dropout = cfg.attention_dropout
        slopes = alibi_slopes(cfg.num_heads) if cfg.position_embedding == "alibi" else None
        self.register_buffer("alibi_slopes", slopes, persistent=False)

    def forward(self, hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        qkv = self.qkv(hidden)  # [..., 3 * heads * head_dim]
        heads = qkv.shape[-1] // (3 * self.head_dim)
        dropout_p = self.attention_dropout if self.training else 0.0
        if layout.is_unpadded:
            u = layout.unpadded
            packed = qkv.view(-1, 3, heads, self.head_dim)  # [T, 3, heads, head_dim]
            context = varlen_attention_qkvpacked(packed, u.cu_seqlens, u.max_seqlen, self.alibi_slopes,
                                                 self.backend, dropout_p=dropout_p)  # [T, heads, head_dim]
            context = context.reshape(-1, heads * self.head_dim)  # [T, heads * head_dim]
        else:
            batch, seq = hidden.shape[:2]
            q, k, v = qkv.view(batch, seq, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, heads, S, d] x3
            context = padded_attention(q, k, v, layout.attention_mask, self.alibi_slopes, dropout_p)
            context = context.transpose(1, 2).reshape(batch, seq, heads * self.head_dim)  # [B, S, heads * d]
        return self.out(context)
