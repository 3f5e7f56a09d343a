"""ZeRO-1 and ZeRO-2 gradients in one flat buffer per parameter group, without DeepSpeed's per-parameter hooks.

DeepSpeed's `DeepSpeedZeroOptimizer` handles gradients per parameter: a Python hook per parameter in every
backward, copies into a reduction bucket, a reduction epilogue of a few launches per parameter (also with one
replica, where the reduction is an identity), an overflow scan and a norm of ~8 launches per parameter, and three
host-device synchronisations per step. On one H200 that host work left the trainer at ~0.90 of a plain step doing
the same device work (docs/ENGINE.md). `FlatGradientZeroOptimizer` keeps everything DeepSpeed builds and saves --
the flat bf16 parameter groups, the fp32 master partitions, the optimizer state, `state_dict`/`load_state_dict`,
the checkpoint files, zero_to_fp32, universal checkpoints -- and replaces only how gradients travel:

- each parameter's `.grad` is a view of one flat gradient buffer with the layout of `bit16_groups_flat`, so
  autograd accumulates micro-batches into it in place (no hooks);
- the reduction is one all-reduce of the buffer (none with one replica): at the accumulation boundary for ZeRO-1
  (gradients accumulate in the parameters' dtype, as DeepSpeed's ZeRO-1 does), after every micro-batch for ZeRO-2,
  which then adds this rank's slice into its gradient partition in `data_types.grad_accum_dtype` (fp32 in megabert)
  -- ZeRO-2's semantics, with the full low-precision buffer held instead of DeepSpeed's 1-2 reduction buckets;
- the step works on the flat partition: the norm (in fp64, as DeepSpeed's), the clip factor and the finiteness
  test on the device. With megabert's fused DecoupledAdamW a non-finite norm (or a non-finite loss flagged by the
  trainer) skips the update on the device and the host never waits; with another optimizer the host reads the flag
  once and skips the step as DeepSpeed does.

What it does not cover stays DeepSpeed's own: fp16 loss scaling, CPU offload, tensor/model parallelism (the norm of
replicated parameters), MoE, ZeRO-3, and DeepSpeed features that hook gradients themselves. `adopt()` checks all of
that and says why it left a run on DeepSpeed's path.
"""

from __future__ import annotations

from typing import Optional

import torch
from deepspeed import comm as dist
from deepspeed.runtime.base_optimizer import ZeROOptimizer
from deepspeed.runtime.utils import all_gather_dp_groups
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

from megabert.utils.logging import get_logger

log = get_logger(__name__)

NORM_CHUNK = 1 << 24  # elements per fp64 norm reduction: a 128 MB copy at most, ~10 launches for megabert-base


class FlatGradientZeroOptimizer(DeepSpeedZeroOptimizer):
    """A DeepSpeedZeroOptimizer whose gradients live in flat buffers (module doc). Made by `adopt`, never built."""

    def _take_over_gradients(self) -> None:
        for hook in self._grad_acc_hooks:
            hook.remove()
        self._grad_acc_hooks = []
        self.flat_gradients = [torch.zeros_like(flat) for flat in self.bit16_groups_flat]
        self._gradient_views = []  # per group: the views handed to the parameters, to check they are still theirs
        for i, flat in enumerate(self.flat_gradients):
            views = []
            for param, meta, offset in zip(self.round_robin_bit16_groups[i], self.round_robin_bit16_meta[i],
                                           self.round_robin_bit16_offsets[i]):
                param.grad = flat.narrow(0, offset, meta.numel()).view(meta.shape)
                param.grad_accum = None
                views.append((param, param.grad))
            self._gradient_views.append(views)
        self._partition_slices = []  # per group: (start, length) of this rank's partition in the flat buffers
        for i, partitions in enumerate(self.parallel_partitioned_bit16_groups):
            rank = dist.get_rank(group=self.real_dp_process_group[i])
            self._partition_slices.append((sum(p.numel() for p in partitions[:rank]), partitions[rank].numel()))
        # ZeRO-2: this rank's gradient partition, accumulated over micro-batches in grad_accum_dtype.
        self.partition_gradients_accumulated = [
            torch.zeros(length, dtype=self.gradient_accumulation_dtype, device=flat.device)
            for (_, length), flat in zip(self._partition_slices, self.flat_gradients)
        ] if self.partition_gradients else None

    # -- backward: nothing per parameter -------------------------------------------------------------------------

    def clear_backward_seen_flag(self) -> None:
        ZeROOptimizer.clear_backward_seen_flag(self)  # the hook counters only; no per-parameter grad_accum to clear

    def backward_epilogue(self, *args, **kwargs) -> None:
        pass

    def reduce_gradients(self, pipeline_parallel: bool = False) -> None:
        """ZeRO-1, at the accumulation boundary (the engine calls it there): the data-parallel mean."""
        self._all_reduce_mean()

    def overlapping_partition_gradients_reduce_epilogue(self) -> None:
        """ZeRO-2, after every micro-batch: reduce, keep this rank's slice in the accumulator, clear the buffer."""
        self._all_reduce_mean()
        for flat, accumulated, (start, length) in zip(self.flat_gradients, self.partition_gradients_accumulated,
                                                      self._partition_slices):
            accumulated.add_(flat.narrow(0, start, length))
            flat.zero_()

    def _all_reduce_mean(self) -> None:
        for i, flat in enumerate(self.flat_gradients):
            group = self.real_dp_process_group[i]
            replicas = dist.get_world_size(group=group)
            if replicas > 1:
                dist.all_reduce(flat, group=group)
                flat.div_(replicas)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zeroes the buffers; the parameters keep their views (`set_to_none` would detach them, so it is ignored)."""
        for flat in self.flat_gradients:
            flat.zero_()
        if self.partition_gradients_accumulated is not None:
            for accumulated in self.partition_gradients_accumulated:
                accumulated.zero_()

    # -- the step -------------------------------------------------------------------------------------------------

    def step(self, closure=None) -> None:
        self.micro_step_id = -1
        self._check_views()
        masters = self.single_partition_of_fp32_groups
        if self.partition_gradients_accumulated is not None:
            grads = [acc.to(m.dtype) for acc, m in zip(self.partition_gradients_accumulated, masters)]
        else:
            grads = [flat.narrow(0, start, length).to(m.dtype)
                     for flat, (start, length), m in zip(self.flat_gradients, self._partition_slices, masters)]
        norm = self._global_norm(grads)
        self._global_grad_norm = norm
        nonfinite = (~torch.isfinite(norm)).float()
        if self.clip_grad > 0:
            # DeepSpeed's factor: divide by max(1, (norm + 1e-6) / clip); 1 where the norm is not finite (skipped)
            factor = torch.where(nonfinite > 0, 1.0, ((norm + 1e-6) / self.clip_grad).clamp(min=1.0))
            torch._foreach_div_(grads, factor)
        inner = self.optimizer
        self.overflow = False
        on_device = getattr(inner, "skips_on_device", False)
        if not on_device and bool(nonfinite.item()):  # the host must know before it steps: one sync, as DeepSpeed's
            self.overflow = True
            self._global_grad_norm = float("inf")
            self.zero_grad()
            return
        flagged = getattr(inner, "nonfinite", None)  # the trainer's flag (a non-finite loss), or None
        if on_device:  # the update is skipped on the device where either flag is set
            inner.nonfinite = nonfinite if flagged is None else torch.maximum(nonfinite, flagged.to(norm.device))
        try:
            for i, grad in enumerate(grads):
                masters[i].grad = grad
                self._optimizer_step(i)
                masters[i].grad = None
                rank = dist.get_rank(group=self.real_dp_process_group[i])
                self.parallel_partitioned_bit16_groups[i][rank].data.copy_(masters[i].data)
        finally:
            if on_device:
                inner.nonfinite = flagged  # the combined flag belongs to this step only
        if any(dist.get_world_size(group=g) > 1 for g in self.real_dp_process_group):
            all_gather_dp_groups(groups_flat=self.bit16_groups_flat,
                                 partitioned_param_groups=self.parallel_partitioned_bit16_groups,
                                 dp_process_group=self.real_dp_process_group,
                                 start_alignment_factor=self.nccl_start_alignment_factor,
                                 allgather_bucket_size=self.allgather_bucket_size)

    def _global_norm(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """L2 norm of the whole gradient: this rank's partitions are disjoint, so squares add over ranks. Computed in
        fp64, as DeepSpeed does (the squares of a large but finite gradient exceed fp32's range, and that must not
        read as an overflow), in chunks of NORM_CHUNK elements, so that the fp64 copy stays small."""
        squares = torch.stack([torch.linalg.vector_norm(chunk, dtype=torch.float64)
                               for g in grads for chunk in g.split(NORM_CHUNK)]).square().sum()
        group = self.dp_process_group
        if dist.get_world_size(group=group) > 1:
            dist.all_reduce(squares, group=group)
        return squares.sqrt().float()

    def _check_views(self) -> None:
        for views in self._gradient_views:
            for param, view in views:
                if param.grad is not view:
                    raise RuntimeError(
                        "a parameter's .grad was replaced outside the optimizer; with parallel.flat_gradients its "
                        "gradient must stay a view of the flat buffer (set parallel.flat_gradients false to use "
                        "DeepSpeed's own gradient handling)")


def ineligible(optimizer) -> Optional[str]:
    """Why a DeepSpeed optimizer cannot take the flat-gradient path, or None if it can."""
    if type(optimizer) is not DeepSpeedZeroOptimizer:
        return f"the engine's optimizer is {type(optimizer).__name__}, not ZeRO 1/2's DeepSpeedZeroOptimizer"
    reasons = {
        "fp16 loss scaling": optimizer.dtype == torch.float16 or optimizer.dynamic_loss_scale
        or optimizer.loss_scale != 1.0 or optimizer.torch_autocast_gradscaler is not None,
        "CPU offload": optimizer.cpu_offload,
        "model/tensor parallelism": optimizer.model_parallel_world_size > 1,
        "MoE layers": optimizer.has_moe_layers,
        "ZenFlow": optimizer.zenflow,
        "gradient_predivide_factor != 1": optimizer.gradient_predivide_factor != 1.0,
        "a communication_data_type other than the parameters'":
            optimizer.communication_data_type not in (None, optimizer.dtype),
        "ZeRO-1 with a separate gradient accumulation dtype": optimizer.use_grad_accum_attribute,
        "Muon parameter groups": any(optimizer._is_muon_group(g) for g in optimizer.bit16_groups if g),
        "several data-parallel groups": len({id(g) for g in optimizer.real_dp_process_group}) > 1,
    }
    found = [name for name, present in reasons.items() if present]
    return ", ".join(found) if found else None


def adopt(engine) -> bool:
    """Switches the engine's ZeRO 1/2 optimizer to flat gradients if it qualifies; says which path the run takes."""
    optimizer = engine.optimizer
    reason = ineligible(optimizer)
    if reason is not None:
        log.info("gradients: DeepSpeed's per-parameter handling (%s)", reason)
        return False
    optimizer.__class__ = FlatGradientZeroOptimizer
    optimizer._take_over_gradients()
    log.info("gradients: flat buffers per parameter group (ZeRO-%d, no per-parameter hooks)",
             2 if optimizer.partition_gradients else 1)
    return True
