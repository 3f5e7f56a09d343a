"""Autograd-correct collectives between the tensor-parallel ranks (Megatron's "mappings").

A column-parallel layer needs the full input on every rank, and each rank's input gradient is only the part that
flows through its own columns: the input enters through `copy_to_tensor_parallel` (identity forward, all-reduce of
the gradient backward). A row-parallel layer produces partial sums: its output leaves through
`reduce_from_tensor_parallel` (all-reduce forward, identity backward). Between the two, every rank holds the same
activations, so replicated parameters (LayerNorms, biases added after a reduction) get identical gradients on every
TP rank without any extra communication.

With one TP rank both are the identity and skip autograd altogether, so TP = 1 costs nothing here.
These run on any backend (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


class _CopyToTensorParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # autograd may hand the same gradient tensor to several consumers: reduce a private copy.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTensorParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        x = x.contiguous()
        dist.all_reduce(x, group=group)  # in place: callers pass a fresh partial sum they own
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def copy_to_tensor_parallel(x: torch.Tensor, group) -> torch.Tensor:
    """Identity forward; all-reduce (sum) of the gradient over `group` backward."""
    if _size(group) == 1:
        return x
    return _CopyToTensorParallel.apply(x, group)


def reduce_from_tensor_parallel(x: torch.Tensor, group) -> torch.Tensor:
    """All-reduce (sum) over `group` forward, in place on `x`; identity backward."""
    if _size(group) == 1:
        return x
    return _ReduceFromTensorParallel.apply(x, group)
