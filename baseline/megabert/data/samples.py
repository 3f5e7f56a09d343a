"""From documents to training samples: splits, sample indices in two modes, per-epoch shuffles, blending.

* Split: each dataset's documents are cut into contiguous train/valid/test ranges by the split weights
  (Megatron's rule), so the three never share a document.
* ``document`` mode (MosaicBERT): one sample per non-empty document, ``[CLS] doc[:seq_len-2] [SEP] [PAD]...``.
* ``packed`` mode: the split's documents, in a seeded order, form one stream ``doc [SEP] doc [SEP] ...`` cut
  into ``seq_len - 1`` token windows, each sample ``[CLS] window``; long documents continue into the next sample.
* Epochs: sample number k of a dataset is epoch ``k // n``, position ``k % n`` of that epoch's permutation,
  drawn from (seed, dataset, epoch). Sample indices (and the permutations of large splits) are cached as .npy
  files (see cache.py).
* Blending: global sample g is assigned to dataset d so that every prefix of the sequence holds each dataset
  within one sample of its weight (sample j of dataset d sits at "time" (j + 0.5) / w_d; merging all datasets by
  time gives the order). The assignment repeats with a fixed period; dataset d's counter keeps increasing
  across periods, so each dataset cycles through its own epochs independently.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from megabert.data.cache import cache_directory, cached_array, parameter_key
from megabert.data.indexed_dataset import IndexedDataset, bin_path, idx_path

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")
BLEND_PERIOD = 1 << 20
CACHE_PERMUTATION_MIN = 1 << 22  # epoch permutations of at least this many samples are cached on disk


def parse_split(split: str) -> list[float]:
    """'969,30,1' -> normalised [train, valid, test] weights (missing entries are 0)."""
    parts = [float(x) for x in str(split).replace("/", ",").split(",") if x.strip()]
    if not parts or len(parts) > 3 or min(parts) < 0 or sum(parts) <= 0:
        raise ValueError(f"split {split!r} needs up to three non-negative weights with a positive sum")
    parts += [0.0] * (3 - len(parts))
    total = sum(parts)
    return [p / total for p in parts]


def split_ranges(num_documents: int, split: str) -> dict[str, tuple[int, int]]:
    """Contiguous document ranges per split: boundaries round(cumulative weight x documents)."""
    weights = parse_split(split)
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + w)
    edges = [int(round(b * num_documents)) for b in bounds]
    edges[-1] = num_documents
    return {name: (edges[i], edges[i + 1]) for i, name in enumerate(SPLIT_NAMES)}


def parse_data_path(data_path: list | str) -> tuple[list[str], Optional[list[float]]]:
    """["0.7", "a", "0.3", "b"] -> (prefixes, weights); ["a", "b"] -> (prefixes, None)."""
    parts = [data_path] if isinstance(data_path, str) else data_path
    items = [x for part in parts for x in str(part).split()]
    if not items:
        raise ValueError("data.data_path is empty; give one or more dataset prefixes written by "
                         "tools/preprocess_data.py")

    def is_number(s: str) -> bool:
        try:
            float(s)
            return True
        except ValueError:
            return False

    if is_number(items[0]):
        if len(items) % 2 or not all(is_number(w) for w in items[0::2]):
            raise ValueError(f"data.data_path {items!r}: weighted form is [weight, prefix, weight, prefix, ...]")
        weights = [float(w) for w in items[0::2]]
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"data.data_path weights {weights} must be non-negative with a positive sum")
        return items[1::2], weights
    return items, None


class SplitSamples:
    """The samples of one split of one dataset, with per-epoch shuffling; builds token rows on demand."""

    def __init__(self, dataset: IndexedDataset, split: str, split_name: str, mode: str, seq_len: int, seed: int,
                 dataset_index: int, cache_dir: Optional[str] = None):
        self._args = (dataset, split, split_name, mode, seq_len, seed, dataset_index, cache_dir)
        self.dataset = dataset
        self.mode, self.seq_len, self.seed, self.dataset_index = mode, seq_len, seed, dataset_index
        self.split_name = split_name
        lo, hi = split_ranges(dataset.num_documents, split)[split_name]
        self._cache = cache_directory(dataset.prefix, cache_dir)
        self._key = {
            # the files' sizes and modification time: re-preprocessing the same prefix invalidates the cache
            "prefix": os.path.realpath(dataset.prefix), "idx_bytes": os.path.getsize(idx_path(dataset.prefix)),
            "bin_bytes": os.path.getsize(bin_path(dataset.prefix)),
            "idx_mtime_ns": os.stat(idx_path(dataset.prefix)).st_mtime_ns, "docs": dataset.num_documents, "sequences": len(dataset), "split": split, "split_name": split_name,
            "mode": mode, "seq_len": seq_len if mode == "packed" else None, "seed": seed if mode == "packed" else None,
        }
        self._name = f"{os.path.basename(dataset.prefix)}_{split_name}_{mode}_{parameter_key(self._key)}"
        self.doc_pointers, self.doc_lengths = self._document_spans(dataset)
        self._itemsize = dataset.dtype.itemsize
        lengths = self.doc_lengths
        if mode == "document":
            self.doc_ids = self._cached("docs", lambda: lo + np.flatnonzero(lengths[lo:hi] > 0).astype(np.int64))
            self.num_samples = len(self.doc_ids)
        elif mode == "packed":
            def order() -> np.ndarray:
                ids = lo + np.flatnonzero(lengths[lo:hi] > 0).astype(np.int64)
                return np.random.default_rng([seed, 0x9AC4ED, dataset_index]).permutation(ids)
            self.doc_ids = self._cached("order", order)
            # stream_end[i]: end (exclusive) of document i and its [SEP] in the packed stream
            self.stream_end = self._cached("stream", lambda: np.cumsum(lengths[self.doc_ids] + 1, dtype=np.int64))
            total = int(self.stream_end[-1]) if len(self.stream_end) else 0
            self.num_samples = total // (seq_len - 1)
        else:
            raise ValueError(f"unknown sample mode {mode!r}; expected 'document' or 'packed'")
        self._perm_epoch, self._perm = -1, None

    def _document_spans(self, dataset: IndexedDataset) -> tuple[np.ndarray, np.ndarray]:
        """(byte offset, token count) per document: views of the index when documents are single sequences,
        else computed once per dataset and cached (sentence-level data)."""
        if dataset.one_sequence_per_document():
            return dataset.sequence_pointers, dataset.sequence_lengths
        key = parameter_key({k: self._key[k] for k in ("prefix", "idx_bytes", "bin_bytes", "idx_mtime_ns", "docs",
                                                       "sequences")})
        base = self._cache / f"{os.path.basename(dataset.prefix)}_{key}"
        spans = None

        def build(column: int) -> np.ndarray:
            nonlocal spans
            if spans is None:
                starts, counts = dataset.document_token_spans()
                spans = (starts * dataset.dtype.itemsize, counts)
            return spans[column]

        return (cached_array(Path(f"{base}_docptr.npy"), lambda: build(0)),
                cached_array(Path(f"{base}_doclen.npy"), lambda: build(1)))

    def __getstate__(self) -> dict:
        """Workers started with 'spawn' get the arrays re-opened from the cache, not copied through a pipe."""
        return {"args": self._args}

    def __setstate__(self, state: dict) -> None:
        self.__init__(*state["args"])

    def _cached(self, what: str, build) -> np.ndarray:
        return cached_array(self._cache / f"{self._name}_{what}.npy", build)

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """Sample order of one epoch, from (seed, dataset index, epoch); the current epoch's is kept in memory.

        Large splits (>= CACHE_PERMUTATION_MIN samples, where drawing takes seconds and ranks on a node would
        each hold a copy) are cached on disk and memory-mapped; small ones are redrawn, which costs less than
        a file per epoch.
        """
        if epoch != self._perm_epoch:
            n = self.num_samples

            def build() -> np.ndarray:
                dtype = np.int32 if n < 2**31 else np.int64
                return np.random.default_rng([self.seed, self.dataset_index, epoch]).permutation(
                    np.arange(n, dtype=dtype))

            if n >= CACHE_PERMUTATION_MIN:
                self._perm = self._cached(f"shuffle_seed{self.seed}_ds{self.dataset_index}_epoch{epoch}", build)
            else:
                self._perm = build()
            self._perm_epoch = epoch
        return self._perm

    def sample_ids(self, sample_numbers: np.ndarray, shuffle: bool = True) -> np.ndarray:
        """Sample number k (counting over epochs) -> sample id within this split."""
        if self.num_samples == 0:
            raise ValueError(f"{self.dataset.prefix!r} has no {self.split_name} samples (empty split)")
        if not shuffle:
            return sample_numbers % self.num_samples
        epochs, positions = np.divmod(sample_numbers, self.num_samples)
        out = np.empty_like(sample_numbers)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self.epoch_permutation(int(epoch))[positions[sel]]
        return out

    def fill_rows(self, sample_ids: np.ndarray, out: np.ndarray, cls_id: int, sep_id: int) -> None:
        """Writes each sample's tokens into a row of ``out`` [B, seq_len] (pre-filled with [PAD]), left-aligned.

        One vectorised gather from the memory map per batch: no per-sample Python.
        """
        tokens, width = self.dataset.tokens, self.seq_len
        rows = np.arange(len(sample_ids))
        out[:, 0] = cls_id
        if self.mode == "document":
            docs = self.doc_ids[sample_ids]
            n = np.minimum(self.doc_lengths[docs], width - 2)  # [B] body tokens kept
            cols = np.arange(width - 2)[None, :]  # [1, S-2]
            inside = cols < n[:, None]  # [B, S-2]
            starts = self.doc_pointers[docs] // self._itemsize  # [B] first token of each document
            where = np.where(inside, starts[:, None] + cols, 0)
            body = out[:, 1:width - 1]
            body[inside] = tokens[where[inside]]
            out[rows, 1 + n] = sep_id
            return
        window = width - 1
        pos = np.asarray(sample_ids, dtype=np.int64)[:, None] * window + np.arange(window)[None, :]  # [B, S-1]
        i = np.searchsorted(self.stream_end, pos, side="right")  # [B, S-1] document position in the stream
        docs = self.doc_ids[i]
        lengths = self.doc_lengths[docs]
        offset = pos - (self.stream_end[i] - lengths - 1)  # within "document tokens + [SEP]"
        is_sep = offset == lengths
        starts = self.doc_pointers[docs] // self._itemsize
        gathered = tokens[np.where(is_sep, 0, starts + np.minimum(offset, lengths - 1))]
        out[:, 1:] = np.where(is_sep, sep_id, gathered)


class BlendIndex:
    """Maps global sample numbers to (dataset, per-dataset sample number), honouring weights in every prefix."""

    def __init__(self, weights: list[float], cache_path: Optional[str] = None, period: int = BLEND_PERIOD):
        w = np.asarray(weights, dtype=np.float64)
        if len(w) == 0 or w.min() < 0 or w.sum() <= 0:
            raise ValueError(f"blend weights {weights} must be non-negative with a positive sum")
        self.weights = w / w.sum()
        self.period = period

        def build() -> np.ndarray:
            times, owners, counters = [], [], []
            for d, wd in enumerate(self.weights):
                if wd == 0:
                    continue
                count = int(np.ceil(period * wd)) + 1
                j = np.arange(count, dtype=np.int64)
                times.append((j + 0.5) / wd)
                owners.append(np.full(count, d, dtype=np.int64))
                counters.append(j)
            order = np.argsort(np.concatenate(times), kind="stable")[:period]
            return np.stack([np.concatenate(owners)[order], np.concatenate(counters)[order]])

        if cache_path:
            table = cached_array(Path(cache_path), build)
        else:
            table = build()
        self.dataset_of = np.asarray(table[0])
        self.counter_of = np.asarray(table[1])
        self.per_period = np.bincount(self.dataset_of, minlength=len(self.weights)).astype(np.int64)

    def lookup(self, global_numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        periods, j = np.divmod(np.asarray(global_numbers, dtype=np.int64), self.period)
        d = self.dataset_of[j]
        return d, periods * self.per_period[d] + self.counter_of[j]
