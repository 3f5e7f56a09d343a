"""Word + token-type (+ learned position, BERT only) embeddings, LayerNorm, dropout."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from megabert.config import ModelConfig
from megabert.model.layernorm import LayerNorm


class Embeddings(nn.Module):
    """Embeds token ids of any shape ([B, S] padded or [T] unpadded); positions are passed in, not assumed."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        # ALiBi carries position in the attention scores; only plain BERT learns a position table.
        self.position_embeddings = (nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
                                    if cfg.position_embedding == "learned" else None)
        self.norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, cfg.low_precision_layernorm)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        if self.position_embeddings is not None:
            if position_ids is None:
                raise ValueError("learned position embeddings need position_ids")
            hidden = hidden + self.position_embeddings(position_ids)
        return self.dropout(self.norm(hidden))
