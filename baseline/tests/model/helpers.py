"""Small model configs and batches shared by the model tests."""

from __future__ import annotations

import torch

from megabert.config import ModelConfig


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96,
                hidden_dropout=0.0, attention_backend="sdpa")
    base.update(overrides)
    return ModelConfig(**base)


def plain_bert_config(**overrides) -> ModelConfig:
    """Every MosaicBERT switch off: a plain BERT."""
    switches = dict(position_embedding="learned", mlp_type="gelu", unpad=False, low_precision_layernorm=False,
                    sparse_mlm_head=False)
    switches.update(overrides)
    return tiny_config(**switches)


def ragged_batch(lengths: list[int], seq_len: int, vocab: int = 128, seed: int = 0):
    """input_ids, attention_mask, labels for left-aligned sequences of the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    input_ids = torch.randint(5, vocab, (batch, seq_len), generator=gen)
    attention_mask = torch.zeros(batch, seq_len, dtype=torch.long)
    labels = torch.full((batch, seq_len), -100)
    for b, n in enumerate(lengths):
        attention_mask[b, :n] = 1
        input_ids[b, n:] = 0
        masked = torch.rand(n, generator=gen) < 0.3
        masked[0] = True  # at least one label per sequence
        labels[b, :n][masked] = input_ids[b, :n][masked]
    return input_ids, attention_mask, labels
