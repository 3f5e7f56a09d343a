"""Tensor-parallel stand-ins for nn.Linear and nn.Embedding, built from a full layer's weights.

Each keeps the attribute names of the layer it replaces (`weight`, `bias`, `padding_idx`), so a parallelized
model has the same state-dict keys as the single-device one, and model code that reads `.weight` (the tied MLM
decoder) keeps working on the local shard.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from megabert.parallel.mappings import copy_to_tensor_parallel, reduce_from_tensor_parallel


def _is_parallel(group) -> bool:
    """Decided once at construction: with one TP rank the layers are plain F.linear / F.embedding calls."""
    return group is not None and dist.get_world_size(group) > 1


class ColumnParallelLinear(nn.Module):
    """y_r = x W_r^T + b_r: this rank's slice of the output features; the input is the full, replicated x."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], group):
        super().__init__()
        self.weight = nn.Parameter(weight)  # [out / tp, in]
        self.bias = nn.Parameter(bias) if bias is not None else None  # [out / tp]
        self.group = group
        self.parallel = _is_parallel(group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            x = copy_to_tensor_parallel(x, self.group)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"local_out={self.weight.shape[0]}, in={self.weight.shape[1]}, bias={self.bias is not None}"


class RowParallelLinear(nn.Module):
    """y = sum_r x_r W_r^T + b: the input arrives split by features; partial products are all-reduced, and the
    (replicated) bias is added once, after the reduction."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], group):
        super().__init__()
        self.weight = nn.Parameter(weight)  # [out, in / tp]
        self.bias = nn.Parameter(bias) if bias is not None else None  # [out], replicated
        self.group = group
        self.parallel = _is_parallel(group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.parallel:
            return F.linear(x, self.weight, self.bias)
        out = reduce_from_tensor_parallel(F.linear(x, self.weight), self.group)
        # Under autocast F.linear returns the low-precision dtype; keep it (nn.Linear would add the bias in it too).
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"out={self.weight.shape[0]}, local_in={self.weight.shape[1]}, bias={self.bias is not None}"


class VocabParallelEmbedding(nn.Module):
    """Rows [vocab_start, vocab_start + local_vocab) of the embedding table. Ids owned by other ranks look up
    zeros here; the all-reduce assembles each id's row from the rank that owns it."""

    def __init__(self, weight: torch.Tensor, vocab_start: int, padding_idx: Optional[int], group):
        super().__init__()
        self.weight = nn.Parameter(weight)  # [vocab / tp, hidden]
        self.vocab_start = vocab_start
        self.vocab_end = vocab_start + weight.shape[0]
        # nn.Embedding never updates the padding row; keep that on the rank that owns it.
        owns_padding = padding_idx is not None and self.vocab_start <= padding_idx < self.vocab_end
        self.padding_idx = padding_idx - vocab_start if owns_padding else None
        self.group = group
        self.parallel = _is_parallel(group)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.parallel:
            return F.embedding(ids, self.weight, self.padding_idx)
        elsewhere = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local_ids = (ids - self.vocab_start).masked_fill(elsewhere, 0)
        rows = F.embedding(local_ids, self.weight, self.padding_idx)  # [..., hidden]
        rows = rows.masked_fill(elsewhere.unsqueeze(-1), 0.0)
        return reduce_from_tensor_parallel(rows, self.group)

    def extra_repr(self) -> str:
        return f"vocab=[{self.vocab_start}, {self.vocab_end}), hidden={self.weight.shape[1]}"
