"""Data pipeline: Megatron .bin/.idx datasets -> sample indices -> masked-LM batches.

Public entry points::

    tok = build_tokenizer(data_cfg)
    data = build_mlm_data(data_cfg, seed, micro_batch_size, dp_rank, dp_size, train_samples)
    it = data.train_batches(consumed_samples)   # infinite, this rank's micro-batches
    vit = data.valid_batches()                   # one deterministic pass over the validation split

Names are imported lazily, so the preprocessing tools (numpy + tokenizers only) never pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "IndexedDataset": "indexed_dataset", "IndexedDatasetWriter": "indexed_dataset", "optimal_dtype": "indexed_dataset",
    "MLMData": "loader", "build_mlm_data": "loader",
    "IGNORE_INDEX": "masking", "MaskingSpec": "masking", "mask_tokens": "masking",
    "Tokenizer": "tokenizer", "build_tokenizer": "tokenizer", "load_tokenizer": "tokenizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"megabert.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'megabert.data' has no attribute {name!r}")
