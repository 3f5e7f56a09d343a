"""Token-count buckets: micro-batches padded up to a few fixed shapes, so each shape can be a captured CUDA graph.

An unpadded micro-batch has T real tokens and M masked ones, both different in every batch. A compiled step with
dynamic shapes takes any T and M, but a CUDA graph replays fixed shapes only. So T is padded up to the next of a
few sizes with dummy tokens, and M up to the next of a few sizes with dummy masked rows, while the loss and every
gradient stay exactly what they were:

  * the batch grows by one row of padding (ids = pad, attention mask 0, labels IGNORE_INDEX): the dummy tokens
    read their ids, token types and (ignored) labels from its first position;
  * the dummy tokens form `dummy_segments` extra sequences of at most seq_len tokens at the end of cu_seqlens
    (unused ones empty), so they attend only among themselves and cost attention work like real tokens would;
  * the dummy masked rows point at the first dummy token, whose label is IGNORE_INDEX: they add nothing to the
    loss, nothing to its count, and get a zero gradient;
  * max_seqlen becomes seq_len, a bound the attention kernels accept as well as the true maximum.

Buckets for a [B, S] batch: T in multiples of `token_step` (a multiple of S, so the dummy tokens of any gap fit in
token_step / S segments), plus B * S + 1 for a batch with no padding at all (one dummy token, so even then the
masked rows can be padded); M in multiples of `masked_step`. A batch of another [B, S] shape is outside the buckets
(`pack_bucketed` returns None): the caller runs it as it is, never truncated.

    buckets = TokenBuckets.for_batch(batch_size, seq_len)
    packed = pack_bucketed(batch, cfg, buckets) or pack_inputs(batch, cfg)   # CPU, e.g. in a DataLoader worker
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from megabert.config import ModelConfig
from megabert.model.bert import IGNORE_INDEX
from megabert.model.inputs import MODEL_INPUTS, PackedInputs
from megabert.ops.padding import Unpadded, unpad_info


@dataclass(frozen=True)
class TokenBuckets:
    """The shapes micro-batches of [batch_size, seq_len] are padded to (module docstring)."""

    batch_size: int
    seq_len: int
    token_step: int
    """T buckets are multiples of this (a multiple of seq_len), plus batch_size * seq_len + 1."""
    masked_step: int
    """M buckets are multiples of this."""

    def __post_init__(self) -> None:
        if min(self.batch_size, self.seq_len, self.token_step, self.masked_step) < 1:
            raise ValueError(f"TokenBuckets needs positive sizes, got {self}")
        if self.token_step % self.seq_len:
            raise ValueError(f"token_step ({self.token_step}) must be a multiple of seq_len ({self.seq_len}): the "
                             f"dummy tokens of a gap are split into sequences of at most seq_len")

    @classmethod
    def for_batch(cls, batch_size: int, seq_len: int, token_step: Optional[int] = None,
                  masked_step: Optional[int] = None) -> "TokenBuckets":
        """Default steps: T in 1/64ths of the grid rounded up to whole sequences (at most ~1.6% of dummy tokens on
        average for a grid half full), M in ~30% of that (MLM masks ~30%), a multiple of 64."""
        grid = batch_size * seq_len
        if token_step is None:
            token_step = -(-max(grid // 64, 1) // seq_len) * seq_len
        if masked_step is None:
            masked_step = max(64, -(-(3 * token_step // 10) // 64) * 64)
        return cls(batch_size, seq_len, token_step, masked_step)

    @property
    def dummy_segments(self) -> int:
        """Extra sequences that hold the dummy tokens (cu_seqlens gains this many entries)."""
        return self.token_step // self.seq_len

    @property
    def grid(self) -> int:
        return self.batch_size * self.seq_len

    def tokens_bucket(self, tokens: int) -> int:
        """The padded T for `tokens` real tokens: always larger, so there is at least one dummy token."""
        if not 0 <= tokens <= self.grid:
            raise ValueError(f"{tokens} tokens do not fit a [{self.batch_size}, {self.seq_len}] batch")
        padded = (tokens // self.token_step + 1) * self.token_step
        return padded if padded <= self.grid else self.grid + 1

    def masked_bucket(self, masked: int) -> int:
        return -(-masked // self.masked_step) * self.masked_step

    def token_buckets(self) -> list[int]:
        """Every T bucket, smallest first."""
        return sorted({self.tokens_bucket(t) for t in range(0, self.grid + 1, self.token_step)} |
                      {self.tokens_bucket(self.grid)})

    def masked_buckets(self) -> list[int]:
        """Every M bucket up to the grid, smallest first (0 for a batch without labels)."""
        return list(range(0, self.masked_bucket(self.grid) + 1, self.masked_step))


def pad_to_bucket(batch: Mapping[str, torch.Tensor], cfg: ModelConfig,
                  buckets: TokenBuckets) -> Optional[tuple[dict[str, torch.Tensor], Optional[Unpadded]]]:
    """The model's input tensors of a CPU MLM batch padded to its bucket (module docstring), and the unpadding
    bookkeeping (max_seqlen = seq_len); None when the batch is not [buckets.batch_size, buckets.seq_len].

    Returns tensors named as pack_inputs names them: input_ids, attention_mask, token_type_ids (if given),
    labels, indices and cu_seqlens (cfg.unpad), masked_token_index (cfg.sparse_mlm_head)."""
    input_ids = batch["input_ids"]
    if tuple(input_ids.shape) != (buckets.batch_size, buckets.seq_len):
        return None
    labels = batch.get("labels")
    if labels is None or labels.shape != input_ids.shape:
        raise ValueError("token-count buckets are for masked-LM batches: labels [B, S] are needed "
                         f"(got {None if labels is None else tuple(labels.shape)})")
    batch_size, seq_len = buckets.batch_size, buckets.seq_len
    attention_mask = batch.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    pad_row = {"input_ids": cfg.pad_token_id, "attention_mask": 0, "token_type_ids": 0, "labels": IGNORE_INDEX}
    given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": batch.get("token_type_ids"),
             "labels": labels}
    tensors = {name: torch.cat([t, torch.full((1, seq_len), pad_row[name], dtype=t.dtype)])  # [B + 1, S]
               for name, t in given.items() if name in MODEL_INPUTS and t is not None}
    dummy_position = batch_size * seq_len  # the first position of the extra row
    unpadded = None
    if cfg.unpad:
        info = unpad_info(attention_mask)
        tokens = info.indices.numel()
        gap = buckets.tokens_bucket(tokens) - tokens
        segments = torch.tensor([min(seq_len, max(0, gap - i * seq_len)) for i in range(buckets.dummy_segments)],
                                dtype=torch.int32)
        tensors["indices"] = torch.cat([info.indices, torch.full((gap,), dummy_position, dtype=torch.int64)])
        tensors["cu_seqlens"] = torch.cat([info.cu_seqlens, tokens + torch.cumsum(segments, 0, dtype=torch.int32)])
        unpadded = Unpadded(tensors["indices"], tensors["cu_seqlens"], seq_len, batch_size + 1, seq_len)
        token_labels, dummy_row = labels.reshape(-1)[info.indices], tokens  # hidden's rows; the first dummy token
    else:
        token_labels, dummy_row = labels.reshape(-1), dummy_position
    if cfg.sparse_mlm_head:
        masked = torch.nonzero(token_labels != IGNORE_INDEX).flatten()
        extra = buckets.masked_bucket(masked.numel()) - masked.numel()
        tensors["masked_token_index"] = torch.cat([masked, torch.full((extra,), dummy_row, dtype=torch.int64)])
    return tensors, unpadded


@dataclass
class BucketedInputs(PackedInputs):
    """PackedInputs of a batch padded to its bucket: its shapes are those of every batch of the same bucket."""

    @property
    def shape_key(self) -> tuple:
        """Equal for two batches exactly when a graph captured for one replays the other."""
        numbers = None if self.unpadded is None else tuple(self.unpadded[2:])
        return tuple((name, tuple(shape), dtype) for name, shape, dtype in self.layout), numbers


def pack_bucketed(batch: Mapping[str, torch.Tensor], cfg: ModelConfig, buckets: TokenBuckets,
                   pin: bool = False) -> Optional[BucketedInputs]:
    """megabert.model.inputs.pack_inputs for a batch padded to its bucket (CPU only, any process); None when the
    batch is outside the buckets. `.to(device)` gives the model's keyword arguments, as for pack_inputs."""
    padded = pad_to_bucket(batch, cfg, buckets)
    if padded is None:
        return None
    tensors, unpadded = padded
    flat = torch.cat([t.reshape(-1).to(torch.int64) for t in tensors.values()])  # [sum of numels]
    if pin:
        flat = flat.pin_memory()
    numbers = None if unpadded is None else unpadded._replace(indices=None, cu_seqlens=None)
    return BucketedInputs(flat, [(k, t.shape, t.dtype) for k, t in tensors.items()], numbers)
