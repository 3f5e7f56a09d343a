"""Feed-forward blocks: GeGLU (MosaicBERT) and GELU (BERT)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from megabert.config import ModelConfig
from megabert.ops.geglu import geglu


class GeGLU(nn.Module):
    """wo(gelu(gate) * value) with [gate | value] = wi(x): one input projection to 2 x intermediate.

    The gate comes first in wi's output rows, as in MosaicBERT's `gated_layers`; wi has no bias, as there.
    The activation is megabert.ops.geglu: one fused Triton kernel on CUDA, eager chunk/gelu/mul elsewhere.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.wi = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.wo(geglu(self.wi(hidden)))  # wi: [..., 2 * intermediate] -> geglu: [..., intermediate]


class GeluMLP(nn.Module):
    """BERT's wo(gelu(wi(x)))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.wi = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.wo(F.gelu(self.wi(hidden)))


def build_mlp(cfg: ModelConfig) -> nn.Module:
    return GeGLU(cfg) if cfg.mlp_type == "geglu" else GeluMLP(cfg)
