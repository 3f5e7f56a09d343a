"""How a batch's tokens are laid out as they flow through the encoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from megabert.ops.padding import Unpadded, pad_input


@dataclass
class TokenLayout:
    """Either unpadded (hidden [T, H], `unpadded` set) or padded (hidden [B, S, H], `attention_mask` set)."""

    attention_mask: torch.Tensor  # [B, S], 1 on real tokens
    unpadded: Optional[Unpadded] = None

    @property
    def is_unpadded(self) -> bool:
        return self.unpadded is not None

    def to_padded(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, ...] or [B, S, ...] -> [B, S, ...]."""
        if self.unpadded is None:
            return hidden
        u = self.unpadded
        return pad_input(hidden, u.indices, u.batch, u.seq_len)

    def first_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """The first real token ([CLS]) of each sequence: [B, H]."""
        if self.unpadded is None:
            return hidden[:, 0]
        return hidden[self.unpadded.cu_seqlens[:-1].long()]

    def select(self, per_position: torch.Tensor) -> torch.Tensor:
        """Picks the entries of a padded [B, S, ...] tensor (labels, say) that line up with hidden's rows."""
        if self.unpadded is None:
            return per_position
        return per_position.reshape(-1, *per_position.shape[2:])[self.unpadded.indices]
