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
    output (T rows unpadded, B * S padded) that carry a label.
    """
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch and batch[k] is not None}
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    extra: dict = {}
    if cfg.unpad and attention_mask.device.type == "cpu":
        info = unpad_info(attention_mask)
        extra["unpadded"] = info.to(device, non_blocking)
        labels = inputs.get("labels")
        if cfg.sparse_mlm_head and labels is not None and labels.dim() == 2:
            token_labels = labels.reshape(-1)[info.indices]  # [T]
            extra["masked_token_index"] = torch.nonzero(token_labels != IGNORE_INDEX).flatten().to(device,
                                                                                                   non_blocking=non_blocking)
    elif cfg.sparse_mlm_head and inputs.get("labels") is not None and inputs["labels"].dim() == 2:
        flat = inputs["labels"].reshape(-1)
        extra["masked_token_index"] = torch.nonzero(flat != IGNORE_INDEX).flatten().to(device,
                                                                                          non_blocking=non_blocking)
    moved = {k: v.to(device, non_blocking=non_blocking) for k, v in inputs.items()}
    return {**moved, **extra}
