"""Data pipeline: Megatron .bin/.idx datasets -> sample indices -> masked-LM batches.

Public entry points::

    tok = build_tokenizer(data_cfg)
    data = build_mlm_data(data_cfg, seed, micro_batch_size, dp_rank, dp_size, train_samples)
    it = data.train_batches(consumed_samples)   # infinite, this rank's micro-batches
    vit = data.valid_batches()                   # one deterministic pass over the validation split
"""

from megabert.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter, optimal_dtype
from megabert.data.loader import MLMData, build_mlm_data
from megabert.data.masking import IGNORE_INDEX, MaskingSpec, mask_tokens
from megabert.data.tokenizer import Tokenizer, build_tokenizer, load_tokenizer

__all__ = [
    "IGNORE_INDEX", "IndexedDataset", "IndexedDatasetWriter", "MLMData", "MaskingSpec", "Tokenizer",
    "build_mlm_data", "build_tokenizer", "load_tokenizer", "mask_tokens", "optimal_dtype",
]
