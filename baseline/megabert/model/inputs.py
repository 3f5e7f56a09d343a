"""Turn a CPU batch into model inputs on the device without a single device synchronisation.

Unpadding needs `nonzero` and `max()`, and the sparse MLM head needs the positions of the masked tokens: on a GPU
each of these stalls the host until the device catches up. Computed here on the CPU copy of the batch, before
the copy to the device, they cost microseconds and the host keeps running ahead of the GPU.

The work comes in two halves so that a training loop can do the first elsewhere (a DataLoader worker process,
a background thread):
    staged = stage_inputs(batch, cfg)   # CPU only: bookkeeping, one int64 staging buffer (small to send)
    staged = staged.pin_memory()        # in the training process: page-locked, so the copy is asynchronous
    inputs = staged.to(device)          # one host-to-device copy, then views
`prepare_inputs` does all three at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional

import torch

from megabert.config import ModelConfig
from megabert.model.bert import IGNORE_INDEX
from megabert.ops.padding import Unpadded, unpad_info

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


@dataclass
class StagedInputs:
    """A batch's model inputs packed into one int64 host buffer, with what is needed to unpack them."""

    flat: torch.Tensor  # int64 [sum of numels], pinned when staged for a GPU
    layout: list[tuple[str, torch.Size, torch.dtype]]  # (name, shape, dtype) in buffer order
    unpadded: Optional[Unpadded]  # the numbers only: its tensors are None here, views of the copy after to()

    def pin_memory(self) -> "StagedInputs":
        """The same inputs in page-locked memory (the DataLoader's pin_memory protocol; pinned only once)."""
        return self if self.flat.is_pinned() else replace(self, flat=self.flat.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = True) -> dict:
        """Keyword arguments for the model on `device`: one copy of `flat`, then views and tiny casts."""
        device = torch.device(device)
        flat = self.flat.to(device, non_blocking=non_blocking and device.type == "cuda")
        moved, offset = {}, 0
        for name, shape, dtype in self.layout:
            numel = shape.numel()
            moved[name] = flat[offset:offset + numel].view(shape).to(dtype)  # int32 cu_seqlens: a tiny cast
            offset += numel
        out = {name: moved[name] for name in MODEL_INPUTS if name in moved}
        if self.unpadded is not None:
            out["unpadded"] = self.unpadded._replace(indices=moved["indices"], cu_seqlens=moved["cu_seqlens"])
        if "masked_token_index" in moved:
            out["masked_token_index"] = moved["masked_token_index"]
        return out


def stage_inputs(batch: Mapping[str, torch.Tensor], cfg: ModelConfig, pin: bool = False) -> StagedInputs:
    """The host half of `prepare_inputs`: CPU tensors [B, S] in, one staging buffer out. No device is touched
    unless `pin`, which page-locks the buffer so the later copy is truly asynchronous; without it this runs in
    any process (a DataLoader worker) and the training process pins the result (StagedInputs.pin_memory)."""
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch and batch[k] is not None}
    if "attention_mask" not in inputs:
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    attention_mask, labels = inputs["attention_mask"], inputs.get("labels")
    info = unpad_info(attention_mask) if cfg.unpad else None
    tensors = dict(inputs)
    if info is not None:
        tensors["indices"], tensors["cu_seqlens"] = info.indices, info.cu_seqlens
    if cfg.sparse_mlm_head and labels is not None and labels.dim() == 2:
        token_labels = labels.reshape(-1) if info is None else labels.reshape(-1)[info.indices]  # hidden's rows
        tensors["masked_token_index"] = torch.nonzero(token_labels != IGNORE_INDEX).flatten()
    flat = torch.cat([t.reshape(-1).to(torch.int64) for t in tensors.values()])  # [sum of numels]
    if pin:
        flat = flat.pin_memory()
    # indices and cu_seqlens travel inside `flat`: no second copy of them (a worker would send each separately)
    numbers = None if info is None else info._replace(indices=None, cu_seqlens=None)
    return StagedInputs(flat, [(k, t.shape, t.dtype) for k, t in tensors.items()], numbers)


def staged_numel_bound(batch_size: int, seq_len: int) -> int:
    """The most values `stage_inputs` can pack for a [batch_size, seq_len] batch: the four model inputs, the
    unpadding indices (at most every token), cu_seqlens and the masked-token rows (at most every token)."""
    return (len(MODEL_INPUTS) + 2) * batch_size * seq_len + batch_size + 1


def prepare_inputs(batch: Mapping[str, torch.Tensor], cfg: ModelConfig, device: torch.device | str,
                   non_blocking: bool = True) -> dict:
    """Keyword arguments for MosaicBertForMaskedLM / ...ForSequenceClassification on `device`.

    batch: CPU tensors [B, S] (input_ids, attention_mask, optional token_type_ids and labels). Adds `unpadded`
    (when cfg.unpad) and, for MLM labels with the sparse head, `masked_token_index`: the rows of the encoder
    output (T rows unpadded, B * S padded) that carry a label. Everything travels to a GPU in one copy from a
    pinned buffer: a copy from pageable memory would make CUDA drain the stream first (a hidden sync).
    """
    device = torch.device(device)
    if batch["input_ids"].device.type != "cpu":  # already on the device: nothing to precompute without a sync
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch and batch[k] is not None}
        inputs.setdefault("attention_mask", torch.ones_like(inputs["input_ids"]))
        return {k: v.to(device, non_blocking=non_blocking) for k, v in inputs.items()}
    return stage_inputs(batch, cfg, pin=device.type == "cuda").to(device, non_blocking)
