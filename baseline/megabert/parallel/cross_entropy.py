"""Cross entropy and argmax over logits whose vocabulary is split across tensor-parallel ranks.

The tied MLM decoder of a vocab-parallel model produces, on rank r, only the logits of its vocabulary slice
[M, V / tp]. The loss needs the softmax normaliser over all V and the logit of the target (which lives on one
rank): both are per-token scalars, so the ranks exchange [M]-sized vectors, never the [M, V] logits.

    max_m   = all-reduce-max over ranks of the local row max           (for a stable exp)
    sum_m   = all-reduce-sum of sum_v exp(z_mv - max_m)
    target_m = all-reduce-sum of (z_m,label - max_m) on the owning rank, 0 elsewhere
    loss_m  = log(sum_m) - target_m
    d loss_m / d z_mv = softmax_mv - [v == label]   (each rank on its own columns)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

IGNORE_INDEX = -100  # as megabert.model.bert.IGNORE_INDEX


def _all_reduce(x: torch.Tensor, group, op=dist.ReduceOp.SUM) -> None:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(x, op=op, group=group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, vocab_start: int, group) -> torch.Tensor:
        # logits [N, V_local] fp32; target [N] global ids (IGNORE_INDEX is "not on this rank" everywhere)
        row_max = logits.max(dim=-1).values  # [N]
        _all_reduce(row_max, group, dist.ReduceOp.MAX)
        shifted = logits - row_max.unsqueeze(-1)  # [N, V_local]

        local_vocab = logits.shape[-1]
        elsewhere = (target < vocab_start) | (target >= vocab_start + local_vocab)
        local_target = (target - vocab_start).masked_fill(elsewhere, 0)
        target_logit = shifted.gather(1, local_target.unsqueeze(1)).squeeze(1).masked_fill(elsewhere, 0.0)

        exp = shifted.exp_()  # reuses `shifted`'s memory
        sums = torch.stack([exp.sum(dim=-1), target_logit])  # [2, N]: one all-reduce for both
        _all_reduce(sums, group)
        sum_exp, target_logit = sums.unbind(0)

        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), local_target, elsewhere)  # softmax, in place
        return sum_exp.log() - target_logit  # [N]

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        softmax, local_target, elsewhere = ctx.saved_tensors
        grad = softmax  # in place (as Megatron): this graph cannot be back-propagated through twice
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad[rows, local_target] -= (~elsewhere).to(grad.dtype)
        return grad.mul_(grad_loss.unsqueeze(-1)), None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, vocab_start: int,
                                 group) -> torch.Tensor:
    """Per-token cross entropy [N] from vocab-sharded logits [N, V_local]; fp32 inside."""
    return _VocabParallelCrossEntropy.apply(logits.float(), target, vocab_start, group)


class VocabParallelMaskedLMLoss:
    """Drop-in for megabert.model.bert.masked_lm_loss on vocab-sharded logits: the mean (fp32) cross entropy over
    positions whose label is not IGNORE_INDEX, identical on every TP rank."""

    def __init__(self, vocab_start: int, group):
        self.vocab_start = vocab_start
        self.group = group

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.reshape(-1, logits.shape[-1])  # [N, V_local]
        labels = labels.reshape(-1)  # [N]
        losses = vocab_parallel_cross_entropy(logits, labels, self.vocab_start, self.group)
        valid = (labels != IGNORE_INDEX).to(losses.dtype)
        return (losses * valid).sum() / valid.sum()  # NaN without any label, as F.cross_entropy

    def __repr__(self) -> str:
        return f"VocabParallelMaskedLMLoss(vocab_start={self.vocab_start})"


def vocab_parallel_argmax(logits: torch.Tensor, group) -> torch.Tensor:
    """Global argmax ids [...] of vocab-sharded logits [..., V / tp] (for MLM accuracy), same on every rank.

    Rank r holds vocabulary ids [r * V / tp, (r + 1) * V / tp). Exchanges one (value, id) pair per row, never the
    logits; ties go to the lowest id, as torch.argmax.
    """
    values, ids = logits.float().max(dim=-1)  # [...]
    if group is None or dist.get_world_size(group) == 1:
        return ids
    size = dist.get_world_size(group)
    ids = ids + dist.get_rank(group) * logits.shape[-1]
    all_values = [torch.empty_like(values) for _ in range(size)]
    all_ids = [torch.empty_like(ids) for _ in range(size)]
    dist.all_gather(all_values, values.contiguous(), group=group)
    dist.all_gather(all_ids, ids.contiguous(), group=group)
    best_rank = torch.stack(all_values).argmax(dim=0, keepdim=True)  # [1, ...]; first max = lowest vocab slice
    return torch.stack(all_ids).gather(0, best_rank).squeeze(0)
