"""Tiny models and batches shared by the tensor-parallel tests."""

from __future__ import annotations

import torch

from megabert.config import ModelConfig
from megabert.model.bert import IGNORE_INDEX

LENGTHS = (16, 11, 7)


def tiny_config(**overrides) -> ModelConfig:
    """MosaicBERT switches on (ALiBi, GeGLU, unpadded, sparse head); no dropout so runs are deterministic."""
    fields = dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                  hidden_dropout=0.0, attention_dropout=0.0, attention_backend="sdpa")
    fields.update(overrides)
    return ModelConfig(**fields)


def plain_bert_config(**overrides) -> ModelConfig:
    """Every MosaicBERT switch off: learned positions, GELU MLP, padded layout, dense MLM head."""
    return tiny_config(position_embedding="learned", mlp_type="gelu", unpad=False, sparse_mlm_head=False,
                       low_precision_layernorm=False, **overrides)


def mlm_batch(cfg: ModelConfig, seed: int, lengths=LENGTHS, mask_prob: float = 0.3) -> dict[str, torch.Tensor]:
    """Padded batch [B, S] with varied lengths, random token types and ~mask_prob labelled positions."""
    g = torch.Generator().manual_seed(seed)
    batch, seq = len(lengths), max(lengths)
    attention_mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    input_ids = torch.randint(1, cfg.vocab_size, (batch, seq), generator=g) * attention_mask
    token_type_ids = torch.randint(0, cfg.type_vocab_size, (batch, seq), generator=g) * attention_mask
    masked = (torch.rand(batch, seq, generator=g) < mask_prob) & attention_mask.bool()
    masked[:, 1] = True  # at least one label per sequence
    labels = torch.where(masked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels)
