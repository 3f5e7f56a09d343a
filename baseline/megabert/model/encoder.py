"""Post-LN transformer layers, as BERT and MosaicBERT."""

from __future__ import annotations

import torch
import torch.nn as nn

from megabert.config import ModelConfig
from megabert.model.attention import SelfAttention
from megabert.model.layernorm import LayerNorm
from megabert.model.layout import TokenLayout
from megabert.model.mlp import build_mlp


class EncoderLayer(nn.Module):
    """x = norm(x + drop(attention(x))); x = norm(x + drop(mlp(x)))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.attention_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, cfg.low_precision_layernorm)
        self.mlp = build_mlp(cfg)
        self.mlp_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, cfg.low_precision_layernorm)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        drop = self.dropout.p if self.training else 0.0  # applied inside add_norm (fused on CUDA)
        hidden = self.attention_norm.add_norm(self.attention(hidden, layout), hidden, drop)
        return self.mlp_norm.add_norm(self.mlp(hidden), hidden, drop)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, layout)
        return hidden
