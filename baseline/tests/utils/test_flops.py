"""The FLOP count behind MFU: parameter counts match the built model, and each term scales as documented."""

import torch.nn as nn

from megabert.config import ModelConfig
from megabert.model.bert import MosaicBertForMaskedLM
from megabert.utils.flops import encoder_matmul_params, head_matmul_params, mfu, training_step_flops


def _linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def test_matmul_params_match_the_model_linear_layers():
    for mlp in ("geglu", "gelu"):
        cfg = ModelConfig(vocab_size=128, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=48, mlp_type=mlp)
        model = MosaicBertForMaskedLM(cfg)
        assert encoder_matmul_params(cfg) == _linear_weights(model.bert.encoder)
        # head: the transform Linear plus the tied decoder (the word-embedding matrix, V x H)
        assert head_matmul_params(cfg) == _linear_weights(model.head) + cfg.vocab_size * cfg.hidden_size


def test_training_flops_terms():
    cfg = ModelConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    dense = 6 * encoder_matmul_params(cfg) * 10
    head = 6 * head_matmul_params(cfg) * 3
    attention = 12 * 2 * 32 * (7 * 7 + 3 * 3)
    assert training_step_flops(cfg, [7, 3], masked_tokens=3) == dense + head + attention
    assert mfu(2e12, 0.5, 8e12) == 0.5
