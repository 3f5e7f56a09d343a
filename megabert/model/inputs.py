"""Turn a CPU batch into model inputs on the device without a single device synchronisation.

Unpadding needs `nonzero` and `max()`, and the sparse MLM head needs the positions of the masked tokens: on a GPU
each of these stalls the host until the device catches up. Computed here on the CPU copy of the batch, before
the copy to the device, they cost microseconds and the host keeps running ahead of the GPU.
"""

from __future__ import annotations

from typing import Mapping

import torch

from megabert.config import ModelConfig
from megabert.model.bert import IGNORE_INDEX
from megabert.ops.padding import unpad_info

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def prepare_inputs(batch: Mapping[str, torch.Tensor], cfg: ModelConfig, device: torch.device | str,
                   non_blocking: bool = True) -> dict:
    """Keyword arguments for MosaicBertForMaskedLM / ...ForSequenceClassification on `device`.

    batch: CPU tensors [B, S] (input_ids, attention_mask, optional token_type_ids and labels). Adds `unpadded`
    (when cfg.unpad) and, for MLM labels with the sparse head, `masked_token_index`: the rows of the encoder
    output (T rows unpadded, B * S padded) that carry a label. Everything travels to a GPU in one copy.
    """
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch and batch[k] is not None}
    if "attention_mask" not in inputs:
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    attention_mask, labels = inputs["attention_mask"], inputs.get("labels")
    if attention_mask.device.type != "cpu":  # already on the device: nothing to precompute without a sync
        return {k: v.to(device, non_blocking=non_blocking) for k, v in inputs.items()}
    info = unpad_info(attention_mask) if cfg.unpad else None
    extras = {}
    if info is not None:
        extras["indices"], extras["cu_seqlens"] = info.indices, info.cu_seqlens
    if cfg.sparse_mlm_head and labels is not None and labels.dim() == 2:
        token_labels = labels.reshape(-1) if info is None else labels.reshape(-1)[info.indices]  # hidden's rows
        extras["masked_token_index"] = torch.nonzero(token_labels != IGNORE_INDEX).flatten()
    moved = _copy_to_device({**inputs, **extras}, torch.device(device), non_blocking)
    out = {k: moved[k] for k in inputs}
    if info is not None:
        out["unpadded"] = info._replace(indices=moved["indices"], cu_seqlens=moved["cu_seqlens"])
    if "masked_token_index" in moved:
        out["masked_token_index"] = moved["masked_token_index"]
    return out


def _copy_to_device(tensors: dict[str, torch.Tensor], device: torch.device, non_blocking: bool) -> dict:
    """One host-to-device copy of integer tensors through a pinned staging buffer.

    A copy from pageable memory makes CUDA wait for the stream to drain first (a hidden sync per tensor); a
    single pinned copy is truly asynchronous and costs one launch instead of seven.
    """
    if device.type != "cuda":
        return {k: v.to(device) for k, v in tensors.items()}
    flat = torch.cat([t.reshape(-1).to(torch.int64) for t in tensors.values()])  # [sum of numels]
    flat = flat.pin_memory().to(device, non_blocking=non_blocking)
    out, offset = {}, 0
    for key, t in tensors.items():
        out[key] = flat[offset:offset + t.numel()].view(t.shape).to(t.dtype)  # int32 cu_seqlens: a tiny cast
        offset += t.numel()
    return out
