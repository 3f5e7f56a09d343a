"""Turn a single-device MosaicBERT model into its tensor-parallel shard, without touching model code.

    model = MosaicBertForMaskedLM(cfg)            # full weights, same seed on every rank
    model = parallelize_model(model, groups)      # now this rank's shard

What changes (Megatron's split, driven by megabert.parallel.sharding):
- attention.qkv  -> ColumnParallelLinear over heads ([q_r | k_r | v_r]); alibi_slopes keeps this rank's heads, and
                    SelfAttention reads its local head count from the weight's shape, so every attention backend
                    runs unchanged on the local heads.
- attention.out  -> RowParallelLinear (bias added once, after the all-reduce).
- mlp.wi         -> ColumnParallelLinear ([gate_r | value_r] for GeGLU), mlp.wo -> RowParallelLinear.
- word embedding -> VocabParallelEmbedding; the tied MLM decoder reads the same sharded `.weight`, the decoder
                    bias is sharded alike, the decoder's input enters through copy_to_tensor_parallel, and the model's
                    `loss_fn` becomes a vocab-parallel cross entropy: logits stay [M, V / tp] on each rank.
Everything else (token-type embedding, LayerNorms, MLM transform, pooler, classifier, row-parallel biases) is
replicated: its inputs are identical on all TP ranks, so its gradients are too and need no extra all-reduce.

Parameters are tagged for DeepSpeed: `tensor_model_parallel` (True on shards) with Megatron's `partition_dim`,
so ZeRO's gradient norm counts a shard on every TP rank and a replicated parameter once.

Hidden dropout sits in replicated regions: seed every rank of a TP group identically (the seed may differ across
data-parallel ranks). Attention dropout (0.0 in MosaicBERT) then draws the same pattern for each rank's local heads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from megabert.config import ModelConfig
from megabert.model.bert import MLMHead
from megabert.parallel.cross_entropy import VocabParallelMaskedLMLoss
from megabert.parallel.groups import ParallelGroups, validate_tensor_parallel
from megabert.parallel.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from megabert.parallel.mappings import copy_to_tensor_parallel
from megabert.parallel.sharding import ShardSpec, shard_spec, split_tensor


@dataclass(frozen=True)
class TensorParallelInfo:
    """Attached to a parallelized model as `model.tensor_parallel`."""

    size: int
    rank: int
    vocab_start: int
    """First vocabulary id of this rank's slice of the embedding / decoder / logits."""


def parallelize_model(model: nn.Module, groups: ParallelGroups, sync_weights: bool = True) -> nn.Module:
    """Replaces the layers of `model` in place by this rank's tensor-parallel shards and returns it.

    `model` holds full weights (MosaicBertModel, MosaicBertForMaskedLM or MosaicBertForSequenceClassification,
    or any module with a `.cfg` ModelConfig built from megabert.model). With `sync_weights` the full weights
    are first broadcast from TP rank 0, so shards of one group always come from the same full model.
    """
    cfg = _model_config(model)
    tp, rank, group = groups.tp_size, groups.tp_rank, groups.tp_group
    validate_tensor_parallel(cfg, tp)
    if getattr(model, "tensor_parallel", None) is not None:
        raise ValueError("parallelize_model was already applied to this model")
    if tp > 1 and (cfg.hidden_dropout > 0 or cfg.attention_dropout > 0):
        check_rng_in_sync(group)
    if sync_weights and tp > 1:
        _broadcast_state(model, groups.get_tensor_model_parallel_src_rank(), group)

    def shard(name: str, tensor: torch.Tensor) -> torch.Tensor:
        return split_tensor(tensor.detach(), shard_spec(name, cfg.mlp_type), tp, rank)

    for prefix, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            name = f"{prefix}.{child_name}" if prefix else child_name
            spec = shard_spec(f"{name}.weight", cfg.mlp_type)
            if spec is None:
                continue
            bias = getattr(child, "bias", None)
            if isinstance(child, nn.Embedding) and spec.kind == "vocab":
                replacement = VocabParallelEmbedding(shard(f"{name}.weight", child.weight),
                                                     rank * child.num_embeddings // tp, child.padding_idx, group)
            elif isinstance(child, nn.Linear) and spec.kind == "column":
                replacement = ColumnParallelLinear(shard(f"{name}.weight", child.weight),
                                                   None if bias is None else shard(f"{name}.bias", bias), group)
            elif isinstance(child, nn.Linear) and spec.kind == "row":
                replacement = RowParallelLinear(shard(f"{name}.weight", child.weight),
                                                None if bias is None else bias.detach().clone(), group)
            else:
                raise TypeError(f"{name} is a {type(child).__name__}; the tensor-parallel plan expects "
                                f"{'nn.Embedding' if spec.kind == 'vocab' else 'nn.Linear'} there")
            replacement.weight.requires_grad_(child.weight.requires_grad)
            setattr(module, child_name, replacement)

        if getattr(module, "alibi_slopes", None) is not None:  # SelfAttention: slopes follow their heads
            module.alibi_slopes = split_tensor(module.alibi_slopes, ShardSpec(0), tp, rank)
        if isinstance(module, MLMHead):
            module.decoder_bias = nn.Parameter(shard(f"{prefix}.decoder_bias", module.decoder_bias))
            if tp > 1:  # the decoder is column-parallel over the vocabulary: its input gradient needs a sum
                module.norm.register_forward_hook(_CopyToTensorParallelHook(group))

    vocab_start = rank * cfg.vocab_size // tp
    if hasattr(model, "loss_fn"):
        model.loss_fn = VocabParallelMaskedLMLoss(vocab_start, group)
    mark_tensor_parallel_parameters(model, cfg.mlp_type)
    model.tensor_parallel = TensorParallelInfo(tp, rank, vocab_start)
    return model


def mark_tensor_parallel_parameters(model: nn.Module, mlp_type: str) -> None:
    """Sets Megatron/DeepSpeed's `tensor_model_parallel`, `partition_dim` and `partition_stride` attributes."""
    for name, param in model.named_parameters():
        spec = shard_spec(name, mlp_type)
        param.tensor_model_parallel = spec is not None
        param.partition_dim = spec.dim if spec is not None else -1
        param.partition_stride = spec.blocks if spec is not None else 1


def check_rng_in_sync(group) -> None:
    """Raises unless torch's RNG state (CPU, and CUDA when in use) is the same on every rank of `group`.

    Hidden dropout runs on activations that every TP rank holds whole; different masks on different ranks would
    silently desynchronise the replicated LayerNorms and residual stream. Collective over `group`.
    """
    states = [torch.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.append(torch.cuda.get_rng_state())
    digest = hashlib.sha256(b"".join(s.numpy().tobytes() for s in states)).digest()
    local = torch.tensor([int.from_bytes(digest[:7], "little")], dtype=torch.int64)
    if dist.get_backend(group) == "nccl":
        local = local.cuda()
    low, high = local.clone(), local.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    if low.item() != high.item():
        raise RuntimeError(
            "the random-number state differs between the ranks of a tensor-parallel group, so dropout would draw "
            "different masks for activations that must stay identical; seed torch with the same value on every rank "
            "of a TP group (e.g. seed + data-parallel rank, never + global rank) before parallelize_model")


class _CopyToTensorParallelHook:
    def __init__(self, group):
        self.group = group

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return copy_to_tensor_parallel(output, self.group)


def _model_config(model: nn.Module) -> ModelConfig:
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"parallelize_model needs a megabert model with a `.cfg` ModelConfig, got "
                        f"{type(model).__name__}")
    return cfg


def _broadcast_state(model: nn.Module, src: int, group) -> None:
    """Copies TP rank 0's parameters and buffers to the other ranks of its TP group."""
    on_gpu_backend = dist.get_backend(group) == "nccl"
    for tensor in list(model.parameters()) + list(model.buffers()):
        data = tensor.data
        if on_gpu_backend and not data.is_cuda:
            staged = data.cuda()
            dist.broadcast(staged, src=src, group=group)
            data.copy_(staged)
        else:
            dist.broadcast(data, src=src, group=group)
