"""LayerNorm that can stay in the autocast dtype.

Under autocast PyTorch upcasts layer_norm to fp32. MosaicBERT's low-precision LayerNorm runs it in bf16
instead: half the memory traffic for an op that is purely memory bound, with no measurable loss in quality.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm with a `low_precision` switch: when on and autocast is active, compute in autocast's dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-12, low_precision: bool = False):
        super().__init__(hidden_size, eps=eps)
        self.low_precision = low_precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _autocast_dtype(x.device.type) if self.low_precision else None
        if dtype is None:
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x.to(dtype), self.normalized_shape, self.weight.to(dtype), self.bias.to(dtype),
                                self.eps)
