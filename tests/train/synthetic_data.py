"""A tiny stand-in for megabert.data with the same contract, for trainer tests that must not depend on a corpus.

Samples are arithmetic token sequences (each sample: a start token and a stride), so masked tokens are predictable
from their neighbours and the MLM loss falls quickly. Sample g of the run is a pure function of (seed, g), and the
global batch is laid out as Megatron's sampler does (data-parallel rank r takes rows r*mb:(r+1)*mb of each
micro-step), so any consumed_samples resumes exactly.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Iterator

import torch

VOCAB, FIRST_WORD, MASK_ID, CLS_ID, SEP_ID = 96, 5, 4, 2, 3


def make_sample(seed: int, index: int, seq_len: int, mask_prob: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    length = int(torch.randint(seq_len // 2, seq_len + 1, (1,), generator=g))
    start = int(torch.randint(0, VOCAB - FIRST_WORD, (1,), generator=g))
    stride = int(torch.randint(1, 4, (1,), generator=g))
    words = FIRST_WORD + (start + stride * torch.arange(length - 2)) % (VOCAB - FIRST_WORD)
    ids = torch.zeros(seq_len, dtype=torch.long)
    ids[:length] = torch.cat([torch.tensor([CLS_ID]), words, torch.tensor([SEP_ID])])
    labels = torch.full((seq_len,), -100, dtype=torch.long)
    masked = torch.zeros(seq_len, dtype=torch.bool)
    masked[1:length - 1] = torch.rand(length - 2, generator=g) < mask_prob
    masked[1] |= not masked[1:length - 1].any()  # at least one label per sample
    labels[masked] = ids[masked]
    ids[masked] = MASK_ID
    mask = torch.zeros(seq_len, dtype=torch.long)
    mask[:length] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}


class SyntheticMLMData:
    def __init__(self, seed: int, seq_len: int, micro_batch_size: int, dp_rank: int, dp_size: int,
                 mask_prob: float = 0.3, eval_mask_prob: float = 0.15, valid_samples: int = 256):
        self.seed, self.seq_len, self.mb = seed, seq_len, micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.mask_prob, self.eval_mask_prob, self.valid_samples = mask_prob, eval_mask_prob, valid_samples
        self.tokenizer = SimpleNamespace(vocab_size=VOCAB)

    def _batch(self, seed: int, first: int, mask_prob: float) -> dict[str, torch.Tensor]:
        rows = [make_sample(seed, first + i, self.seq_len, mask_prob) for i in range(self.mb)]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def train_batches(self, consumed_samples: int = 0) -> Iterator:
        g = consumed_samples
        while True:
            yield self._batch(self.seed, g + self.dp_rank * self.mb, self.mask_prob)
            g += self.mb * self.dp_size

    def valid_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        for g in range(0, self.valid_samples - self.mb * self.dp_size + 1, self.mb * self.dp_size):
            yield self._batch(self.seed + 7919, g + self.dp_rank * self.mb, self.eval_mask_prob)


def build(cfg, dp_rank: int, dp_size: int, train_samples: int) -> SyntheticMLMData:
    """Same signature as megabert.train.trainer.default_data_builder."""
    return SyntheticMLMData(cfg.seed, cfg.data.seq_len, cfg.micro_batch_size, dp_rank, dp_size,
                            cfg.data.mask_prob, cfg.data.eval_mask_prob)
