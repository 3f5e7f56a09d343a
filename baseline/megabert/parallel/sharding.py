"""Which parameters are split across tensor-parallel ranks, along which dimension, and how.

One plan serves both `parallelize_model` (slicing a full model into its shard) and the checkpoint tools (merging
shards back, splitting a full state dict), so the two can never disagree.

Fused weights are split block by block: the QKV projection's output rows are [q | k | v] (each [heads, head_dim]),
GeGLU's input projection's are [gate | value] (each [intermediate]). Rank r keeps the r-th slice of *every* block, so
its shard is again [q_r | k_r | v_r] or [gate_r | value_r] and the unchanged model code (which splits by position)
reads it correctly: rank r holds whole heads, and each gate stays beside its value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class ShardSpec:
    """Split along `dim`, which is the concatenation of `blocks` equal blocks, each split over the TP ranks."""

    dim: int
    blocks: int = 1
    kind: str = "column"
    """'column' (output features split), 'row' (input features split) or 'vocab' (embedding / decoder rows)."""


# Parameter-name suffixes (matched at the end of a dotted name, so prefixes such as "module." or "_orig_mod."
# are fine) -> spec. The GeGLU input projection is filled in by `shard_spec` because it depends on mlp_type.
_PLAN = (
    (r"embeddings\.word_embeddings\.weight", ShardSpec(0, kind="vocab")),
    (r"head\.decoder_bias", ShardSpec(0, kind="vocab")),
    (r"attention\.qkv\.(weight|bias)", ShardSpec(0, blocks=3)),
    (r"attention\.out\.weight", ShardSpec(1, kind="row")),
    (r"mlp\.wi\.(weight|bias)", None),
    (r"mlp\.wo\.weight", ShardSpec(1, kind="row")),
)
_PATTERNS = [(re.compile(r"(^|\.)" + suffix + r"$"), spec) for suffix, spec in _PLAN]


def shard_spec(name: str, mlp_type: str = "geglu") -> Optional[ShardSpec]:
    """The split of parameter `name`, or None when it is replicated on every TP rank."""
    for pattern, spec in _PATTERNS:
        if pattern.search(name):
            if spec is None:  # MLP input projection: GeGLU rows are [gate | value]
                return ShardSpec(0, blocks=2 if mlp_type == "geglu" else 1)
            return spec
    return None


def split_tensor(full: torch.Tensor, spec: ShardSpec, tp_size: int, tp_rank: int) -> torch.Tensor:
    """The `tp_rank`-th shard of `full` (a contiguous copy)."""
    size = full.shape[spec.dim]
    if size % (spec.blocks * tp_size) != 0:
        raise ValueError(f"dimension {spec.dim} of size {size} ({spec.blocks} block(s)) does not split over "
                         f"{tp_size} tensor-parallel ranks")
    blocks = full.chunk(spec.blocks, dim=spec.dim)  # each [..., size / blocks, ...]
    return torch.cat([b.chunk(tp_size, dim=spec.dim)[tp_rank] for b in blocks], dim=spec.dim).contiguous()


def merge_tensors(shards: list[torch.Tensor], spec: ShardSpec) -> torch.Tensor:
    """Inverse of `split_tensor` over all ranks: shards[r] is rank r's shard."""
    per_rank = [s.chunk(spec.blocks, dim=spec.dim) for s in shards]  # [rank][block]
    blocks = [torch.cat([per_rank[r][b] for r in range(len(shards))], dim=spec.dim) for b in range(spec.blocks)]
    return torch.cat(blocks, dim=spec.dim)
