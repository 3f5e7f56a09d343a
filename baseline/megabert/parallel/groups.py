"""Tensor x data parallel process groups, in Megatron's rank layout, as one explicit object.

    world = data_parallel_size x tensor_parallel_size,  global rank = dp_rank * tp_size + tp_rank

Tensor-parallel (TP) groups are blocks of consecutive ranks ([0, 1], [2, 3], ... for TP = 2). Launchers number the
GPUs of a node consecutively, so with TP <= GPUs per node a TP group never leaves its node: its all-reduces (two per
layer in the forward and two in the backward) stay on NVLink, while the data-parallel (DP) groups ({0, 2}, {1, 3})
carry only the once-per-step gradient reduction across nodes.

`ParallelGroups` is created once, after `torch.distributed` is initialised, and passed to whatever needs it
(`parallelize_model`, the trainer, DeepSpeed's `mpu=` argument). There is no module-level state: a test builds one,
uses it and calls `destroy()`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist

from megabert.config import ConfigError, ModelConfig


class TensorParallelError(ConfigError):
    """A size does not split over the tensor-parallel ranks; the message names it and the fix."""


# ----------------------------------------------------------------------------------------------------------------
# Validation (no processes needed)
# ----------------------------------------------------------------------------------------------------------------


def validate_tensor_parallel(model_cfg: ModelConfig, tensor_parallel_size: int,
                             world_size: Optional[int] = None) -> None:
    """Raises TensorParallelError unless every split dimension of the model divides evenly over TP ranks."""
    tp = tensor_parallel_size
    if not isinstance(tp, int) or tp < 1:
        raise TensorParallelError(f"tensor_parallel_size must be an integer >= 1, got {tp!r}")
    if world_size is not None and world_size % tp != 0:
        raise TensorParallelError(
            f"world size ({world_size}) is not divisible by tensor_parallel_size ({tp}); launch a multiple of {tp} "
            f"processes or choose tensor_parallel_size among {_divisors(world_size)}")
    splits = {
        "model.num_heads": (model_cfg.num_heads, "attention heads are split across TP ranks"),
        "model.vocab_size": (model_cfg.vocab_size, "the word embedding and MLM decoder are split by vocabulary rows"),
        "model.intermediate_size": (model_cfg.intermediate_size, "the MLP is split by intermediate units"),
    }
    for name, (size, why) in splits.items():
        if size % tp != 0:
            raise TensorParallelError(
                f"{name} ({size}) is not divisible by tensor_parallel_size ({tp}): {why}; use a "
                f"tensor_parallel_size among {_divisors(size, limit=64)} or change {name}")


def _divisors(n: int, limit: Optional[int] = None) -> list[int]:
    return [d for d in range(1, (min(n, limit) if limit else n) + 1) if n % d == 0]


@dataclass(frozen=True)
class RankLayout:
    """Which global ranks form each TP group and each DP group (pure arithmetic, testable without processes)."""

    world_size: int
    tensor_parallel_size: int

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1 or self.world_size % self.tensor_parallel_size != 0:
            raise TensorParallelError(
                f"world size ({self.world_size}) is not divisible by tensor_parallel_size "
                f"({self.tensor_parallel_size}); choose tensor_parallel_size among {_divisors(self.world_size)}")

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // self.tensor_parallel_size

    def tensor_parallel_groups(self) -> list[list[int]]:
        tp = self.tensor_parallel_size
        return [list(range(d * tp, (d + 1) * tp)) for d in range(self.data_parallel_size)]

    def data_parallel_groups(self) -> list[list[int]]:
        tp = self.tensor_parallel_size
        return [list(range(t, self.world_size, tp)) for t in range(tp)]

    def coordinates(self, rank: int) -> tuple[int, int]:
        """(tp_rank, dp_rank) of a global rank."""
        return rank % self.tensor_parallel_size, rank // self.tensor_parallel_size


# ----------------------------------------------------------------------------------------------------------------
# Process groups
# ----------------------------------------------------------------------------------------------------------------


class ParallelGroups:
    """The TP and DP process groups of this rank; also DeepSpeed's model-parallel unit (`mpu`).

    DeepSpeed (ZeRO 1/2, gradient clipping, checkpoint names, data sampler) asks an mpu for the model-parallel and
    data-parallel rank/size/group; the `get_*` methods below are exactly those it calls. ZeRO then partitions
    optimizer state over the DP group only, and its gradient norm counts a TP-sharded parameter on every TP rank
    but a replicated one only on TP rank 0 (parameters are marked by `parallelize_model`), so clipping uses the
    true global norm.
    """

    def __init__(self, tensor_parallel_size: int = 1, model_cfg: Optional[ModelConfig] = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ParallelGroups needs torch.distributed initialised first "
                               "(dist.init_process_group or deepspeed.init_distributed)")
        world_size, rank = dist.get_world_size(), dist.get_rank()
        if model_cfg is not None:
            validate_tensor_parallel(model_cfg, tensor_parallel_size, world_size)
        self.layout = RankLayout(world_size, tensor_parallel_size)
        self.rank = rank
        self.tp_rank, self.dp_rank = self.layout.coordinates(rank)
        self.tp_size = tensor_parallel_size
        self.dp_size = self.layout.data_parallel_size
        # new_group is collective: every rank creates every group, in the same order.
        self._created: list = []
        self.tp_group = self._new_groups(self.layout.tensor_parallel_groups())
        self.dp_group = self._new_groups(self.layout.data_parallel_groups())
        self.tp_ranks = self.layout.tensor_parallel_groups()[self.dp_rank]
        self.dp_ranks = self.layout.data_parallel_groups()[self.tp_rank]

    @classmethod
    def from_config(cls, tensor_parallel_size: int, model_cfg: ModelConfig) -> "ParallelGroups":
        """Validates the model's split sizes and the world size, then creates the groups."""
        return cls(tensor_parallel_size, model_cfg)

    def _new_groups(self, all_ranks: list[list[int]]):
        mine = None
        for ranks in all_ranks:
            group = dist.new_group(ranks)
            self._created.append(group)
            if self.rank in ranks:
                mine = group
        return mine

    def check_zero_stage(self, zero_stage: int) -> None:
        """ZeRO-3 partitions every parameter over the data-parallel group and gathers it whole for compute, which
        DeepSpeed does not combine with Megatron-style shards; ZeRO 1/2 partition only optimizer state/gradients."""
        if zero_stage == 3 and self.tp_size > 1:
            raise TensorParallelError(
                f"ZeRO stage 3 cannot be combined with tensor_parallel_size {self.tp_size}; use parallel.zero_stage "
                f"1 or 2 with tensor parallelism, or tensor_parallel_size 1 with ZeRO-3")

    def destroy(self) -> None:
        """Frees the groups (and unregisters this object from DeepSpeed if it was handed to it as mpu)."""
        ds_groups = sys.modules.get("deepspeed.utils.groups")
        if ds_groups is not None and getattr(ds_groups, "mpu", None) is self:
            ds_groups.mpu = None
        for group in self._created:
            if group is not None and group is not dist.GroupMember.NON_GROUP_MEMBER:
                dist.destroy_process_group(group)
        self._created.clear()
        self.tp_group = self.dp_group = None

    def __repr__(self) -> str:
        return (f"ParallelGroups(rank={self.rank}, tp={self.tp_rank}/{self.tp_size} {self.tp_ranks}, "
                f"dp={self.dp_rank}/{self.dp_size} {self.dp_ranks})")

    # --- DeepSpeed / Megatron mpu interface -------------------------------------------------------------------
    # "model parallel" here means tensor parallel: there is no pipeline parallelism.

    def get_model_parallel_rank(self) -> int:
        return self.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.tp_size

    def get_model_parallel_group(self):
        return self.tp_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        """Global rank of TP rank 0 in this rank's TP group."""
        return self.tp_ranks[0]

    def get_data_parallel_rank(self) -> int:
        return self.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.dp_size

    def get_data_parallel_group(self):
        return self.dp_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self.dp_ranks)

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1
