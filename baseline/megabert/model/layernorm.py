"""LayerNorm that can stay in the autocast dtype.

Under autocast PyTorch upcasts layer_norm to fp32. MosaicBERT's low-precision LayerNorm runs it in bf16
instead: half the memory traffic for an op that is purely memory bound, with no measurable loss in quality.
`add_norm(x, residual, dropout_p)` is the post-LN step norm(dropout(x) + residual); on CUDA in a 16-bit dtype it
runs the fused Triton kernel of megabert.ops.add_layernorm (one read of each input, one write, fp32 statistics,
dropout mask regenerated in the backward instead of stored).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from megabert.ops import add_layernorm as fused_add_layernorm


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

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The 16-bit dtype the fused kernel would run in, or None when the eager path must run."""
        autocast_dtype = _autocast_dtype(x.device.type)
        if autocast_dtype is not None:
            return autocast_dtype if self.low_precision and autocast_dtype != torch.float32 else None
        return x.dtype if x.dtype in (torch.float16, torch.bfloat16) else None

    def add_norm(self, x: torch.Tensor, residual: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        """norm(dropout(x) + residual): one fused kernel on CUDA in bf16/fp16, the same eager ops elsewhere.

        dropout_p is the caller's training-time rate (0.0 in eval)."""
        dtype = self._compute_dtype(x)
        if dtype is None or not fused_add_layernorm.is_available(x) or not x.is_cuda:
            if dropout_p > 0.0:
                x = F.dropout(x, dropout_p, training=True)
            return self(x + residual)
        # The fused op runs no autocast-eligible aten op, so no autocast(enabled=False) region is needed.
        return fused_add_layernorm.add_layernorm(x.to(dtype), residual.to(dtype), self.weight, self.bias, self.eps,
                                                 dropout_p)
