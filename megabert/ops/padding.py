"""Remove padding once, put it back only where a caller needs [B, S, ...].

MosaicBERT's encoder runs on the real tokens only: [B, S, H] with an attention mask becomes [T, H] with
cu_seqlens [B + 1] and max_seqlen. These helpers are autograd-friendly gathers and scatters.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Unpadded(NamedTuple):
    """Where the real tokens of a padded batch live."""

    indices: torch.Tensor  # int64 [T]: flat positions in the [B * S] grid
    cu_seqlens: torch.Tensor  # int32 [B + 1]
    max_seqlen: int  # longest real sequence in the batch
    batch: int
    seq_len: int  # padded length S

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Unpadded":
        """The same bookkeeping on `device`. Computed on the CPU copy of a batch and moved with the batch, it
        costs the GPU no synchronisation (no nonzero, no .item() on device tensors)."""
        return self._replace(indices=self.indices.to(device, non_blocking=non_blocking),
                             cu_seqlens=self.cu_seqlens.to(device, non_blocking=non_blocking))


def unpad_info(attention_mask: torch.Tensor) -> Unpadded:
    """Index bookkeeping for `attention_mask` [B, S] (1 on real tokens, anywhere in the row)."""
    batch, seq_len = attention_mask.shape
    mask = attention_mask.bool()
    seqlens = mask.sum(dim=1, dtype=torch.int32)  # [B]
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()  # [T]
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))  # [B + 1]
    max_seqlen = int(seqlens.max().item()) if batch > 0 else 0
    return Unpadded(indices, cu_seqlens, max_seqlen, batch, seq_len)


def unpad_input(hidden: torch.Tensor, info: Unpadded) -> torch.Tensor:
    """[B, S, ...] -> [T, ...]."""
    return hidden.reshape(info.batch * info.seq_len, *hidden.shape[2:])[info.indices]


def pad_input(tokens: torch.Tensor, indices: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
    """[T, ...] -> [B, S, ...] with zeros at padded positions."""
    out = tokens.new_zeros(batch * seq_len, *tokens.shape[1:])
    out = out.index_put((indices,), tokens)  # out-of-place so autograd flows to `tokens`
    return out.view(batch, seq_len, *tokens.shape[1:])


def unpad_indices(cu_seqlens: torch.Tensor, seq_len: int, total: int | None = None) -> torch.Tensor:
    """Flat [B * seq_len] positions of left-aligned sequences described by cu_seqlens.

    With `total` (the token count T, known from a tensor's shape) the positions come from a search over
    cu_seqlens: no data-dependent output shape, so no device synchronisation and nothing that stops
    torch.compile; zero-length sequences are allowed. Without it they come from a `nonzero`."""
    if total is not None:
        tokens = torch.arange(total, device=cu_seqlens.device)  # [T]
        starts = cu_seqlens.long()
        # the last sequence starting at or before each token: ties (empty sequences) resolve to the non-empty one
        sequence = torch.searchsorted(starts, tokens, right=True) - 1  # [T]
        return sequence * seq_len + (tokens - starts[sequence])
    seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # [B]
    batch = seqlens.numel()
    positions = torch.arange(seq_len, device=cu_seqlens.device)[None, :].expand(batch, seq_len)  # [B, S]
    keep = positions < seqlens[:, None]
    return torch.nonzero(keep.flatten(), as_tuple=False).flatten()
