"""Masked-LM batches for one data-parallel rank, resumable from a global sample count.

Order of samples (Megatron's pretraining sampler): the run consumes global samples 0, 1, 2, ... in blocks of
``micro_batch_size x dp_size``; in block t, rank r takes samples ``[t*B + r*m, t*B + (r+1)*m)`` (B = m x dp).
A global batch of G samples (G a multiple of B) is therefore samples ``[step*G, (step+1)*G)`` whatever the
data-parallel size, and ``consumed_samples`` (global) is all a checkpoint needs to resume on any number of ranks.

Each micro-batch is built by one vectorised call (token rows from the memory map, then masking), so a
DataLoader worker handles whole batches; with ``num_workers=0`` batches are built in the calling process.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import signal
import weakref
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from megabert.data.cache import cache_directory, parameter_key
from megabert.data.check import check_token_ids
from megabert.data.indexed_dataset import IndexedDataset
from megabert.data.masking import MaskingSpec, mask_tokens, sample_keys
from megabert.data.samples import BlendIndex, SplitSamples, parse_data_path
from megabert.data.tokenizer import Tokenizer, build_tokenizer

BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")
"""The tensors of every batch, each int64 [micro_batch, seq_len]."""

log = logging.getLogger(__name__)

TRAIN_STREAM, VALID_STREAM = 1, 2

LOADER_PREFETCH = 4
"""Micro-batches each DataLoader worker builds ahead of the consumer."""


@dataclass
class _BatchRecipe:
    """Everything a worker needs to build batches; picklable (datasets re-open their memory maps)."""

    splits: list[SplitSamples]
    spec: MaskingSpec
    pad_id: int
    cls_id: int
    sep_id: int
    seq_len: int
    mask_prob: float
    whole_word: bool
    seed: int
    stream: int

    def build(self, dataset_of: np.ndarray, numbers: np.ndarray, sample_ids: np.ndarray) -> dict[str, torch.Tensor]:
        """Batch of samples given, per row, its dataset, its per-dataset sample number (mask key) and its id."""
        rows = np.full((len(numbers), self.seq_len), self.pad_id, dtype=np.int64)  # [B, S]
        for d in np.unique(dataset_of):
            sel = np.flatnonzero(dataset_of == d)
            block = rows[sel]
            self.splits[int(d)].fill_rows(sample_ids[sel], block, self.cls_id, self.sep_id)
            rows[sel] = block
        if rows.max() >= len(self.spec.is_special):
            raise ValueError(f"a batch holds token id {rows.max()} >= the tokenizer's vocabulary "
                             f"({len(self.spec.is_special)}); was the data preprocessed with another tokenizer?")
        attention_mask = (rows != self.pad_id).astype(np.int64)
        keys = sample_keys(self.seed, self.stream, dataset_of, numbers)
        input_ids, labels = mask_tokens(rows, keys, self.mask_prob, self.spec, self.whole_word)
        # One storage for the four tensors: a worker hands the batch over through one shared-memory segment
        # instead of four, which is most of what a DataLoader worker costs the training process.
        packed = torch.zeros((len(BATCH_KEYS), *rows.shape), dtype=torch.int64)  # [4, B, S]
        packed[0] = torch.from_numpy(input_ids)
        packed[1] = torch.from_numpy(attention_mask)
        packed[3] = torch.from_numpy(labels)  # packed[2]: token types, all 0 for single-segment samples
        return dict(zip(BATCH_KEYS, packed.unbind(0)))


class _TrainBatches(torch.utils.data.Dataset):
    """Map-style: item t is this rank's t-th micro-batch of training (t counts from the start of the run)."""

    def __init__(self, recipe: _BatchRecipe, blend: Optional[BlendIndex], micro: int, dp_rank: int, dp_size: int):
        self.recipe, self.blend = recipe, blend
        self.micro, self.dp_rank, self.dp_size = micro, dp_rank, dp_size

    def global_numbers(self, t: int) -> np.ndarray:
        first = t * self.micro * self.dp_size + self.dp_rank * self.micro
        return np.arange(first, first + self.micro, dtype=np.int64)

    def __getitem__(self, t: int) -> dict[str, torch.Tensor]:
        g = self.global_numbers(t)
        if self.blend is None:
            dataset_of, numbers = np.zeros_like(g), g
        else:
            dataset_of, numbers = self.blend.lookup(g)
        ids = np.empty_like(numbers)
        for d in np.unique(dataset_of):
            sel = dataset_of == d
            ids[sel] = self.recipe.splits[int(d)].sample_ids(numbers[sel])
        return self.recipe.build(dataset_of, numbers, ids)


class _ValidBatches(torch.utils.data.Dataset):
    """Item t: this rank's t-th validation micro-batch over a fixed, seeded order of all validation samples."""

    def __init__(self, recipe: _BatchRecipe, owners: np.ndarray, ids: np.ndarray, micro: int, dp_rank: int,
                 dp_size: int):
        self.recipe, self.owners, self.ids = recipe, owners, ids
        self.micro, self.dp_rank, self.dp_size = micro, dp_rank, dp_size

    def __len__(self) -> int:
        return max(1, len(self.ids) // (self.micro * self.dp_size))

    def __getitem__(self, t: int) -> dict[str, torch.Tensor]:
        first = t * self.micro * self.dp_size + self.dp_rank * self.micro
        g = np.arange(first, first + self.micro) % len(self.ids)  # wraps only when the split < one global batch
        return self.recipe.build(self.owners[g], g, self.ids[g])


class MLMData:
    """Training and validation batches of one data-parallel rank. Built by ``build_mlm_data``."""

    def __init__(self, data_cfg, tokenizer: Tokenizer, seed: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int, train_samples: Optional[int] = None):
        if micro_batch_size <= 0 or dp_size <= 0 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"bad batch layout: micro_batch_size={micro_batch_size}, dp_rank={dp_rank}, "
                             f"dp_size={dp_size}")
        if hasattr(data_cfg, "validate"):
            data_cfg.validate()
        self.cfg, self.tokenizer, self.seed = data_cfg, tokenizer, seed
        self.micro_batch_size, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size
        prefixes, weights = parse_data_path(data_cfg.data_path)
        datasets = [IndexedDataset(p) for p in prefixes]
        for ds in datasets:
            check_token_ids(ds, tokenizer.vocab_size)  # another vocabulary's data, caught on a bounded sample

        def splits(name: str) -> list[SplitSamples]:
            return [SplitSamples(ds, data_cfg.split, name, data_cfg.sample_mode, data_cfg.seq_len, seed, i,
                                 data_cfg.cache_dir) for i, ds in enumerate(datasets)]

        self.train_splits, self.valid_splits = splits("train"), splits("valid")
        sizes = [s.num_samples for s in self.train_splits]
        if sum(sizes) == 0:
            raise ValueError(f"no training samples in {prefixes}: every training document is empty "
                             f"(check data.split={data_cfg.split!r} and the preprocessing summary)")
        if weights is None:
            weights = [float(n) for n in sizes]  # unweighted: each dataset in proportion to its size
        for prefix, w, n in zip(prefixes, weights, sizes):
            if w > 0 and n == 0:
                raise ValueError(f"{prefix!r} has weight {w} but no training samples")
        self.weights = [w / sum(weights) for w in weights]
        self.blend = None
        if len(datasets) > 1:
            key = parameter_key({"splits": [s._name for s in self.train_splits], "weights": self.weights})
            cache = cache_directory(prefixes[0], data_cfg.cache_dir) / f"blend_{key}.npy"
            self.blend = BlendIndex(self.weights, str(cache))
        spec = MaskingSpec.from_tokenizer(tokenizer)
        common = dict(spec=spec, pad_id=tokenizer.pad_id, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
                      seq_len=data_cfg.seq_len, whole_word=data_cfg.whole_word_masking, seed=seed)
        self._train_recipe = _BatchRecipe(self.train_splits, mask_prob=data_cfg.mask_prob, stream=TRAIN_STREAM,
                                          **common)
        self._valid_recipe = _BatchRecipe(self.valid_splits, mask_prob=data_cfg.eval_mask_prob,
                                          stream=VALID_STREAM, **common)
        self.num_train_samples = sum(sizes)  # one pass over every training sample
        self.num_valid_samples = sum(s.num_samples for s in self.valid_splits)
        if train_samples:
            log.info("training on %d samples = %.2f epochs of %d samples (%s mode, seq_len %d)", train_samples,
                     train_samples / self.num_train_samples, self.num_train_samples, data_cfg.sample_mode,
                     data_cfg.seq_len)

    @property
    def samples_per_block(self) -> int:
        """Global samples consumed per micro-step of every rank together (micro_batch_size x dp_size)."""
        return self.micro_batch_size * self.dp_size

    def _loader(self, dataset, indices) -> Iterator[dict[str, torch.Tensor]]:
        workers = int(getattr(self.cfg, "num_workers", 0))
        if workers == 0:
            return (dataset[t] for t in indices)
        # A generator of its own: a DataLoader iterator otherwise draws its workers' base seed from the global
        # torch RNG, which would shift a resumed run's dropout stream (restored before the iterator is made).
        # The batches do not depend on that seed (masking is seeded per sample).
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=indices, num_workers=workers,
                                             prefetch_factor=LOADER_PREFETCH, persistent_workers=False,
                                             worker_init_fn=_ignore_stop_signals,
                                             generator=torch.Generator().manual_seed(self.seed))
        return WorkerBatches(iter(loader))

    def train_batches(self, consumed_samples: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Infinite iterator over this rank's micro-batches, starting after ``consumed_samples`` global samples."""
        if consumed_samples < 0 or consumed_samples % self.samples_per_block:
            raise ValueError(f"consumed_samples ({consumed_samples}) must be a non-negative multiple of "
                             f"micro_batch_size x dp_size ({self.samples_per_block})")
        dataset = _TrainBatches(self._train_recipe, self.blend, self.micro_batch_size, self.dp_rank, self.dp_size)
        return self._loader(dataset, _Counter(consumed_samples // self.samples_per_block))

    def valid_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """One deterministic pass over the validation split (``eval_mask_prob``, fixed masks): every rank yields
        the same number of micro-batches, ``max(1, valid samples // (micro x dp))``. Call again to start over."""
        owners = np.concatenate([np.full(s.num_samples, i, dtype=np.int64) for i, s in enumerate(self.valid_splits)])
        ids = np.concatenate([np.arange(s.num_samples, dtype=np.int64) for s in self.valid_splits])
        if len(ids) == 0:
            raise ValueError(f"the validation split is empty (data.split={self.cfg.split!r}); give it a weight")
        order = np.random.default_rng([self.seed, 0x7A11D]).permutation(len(ids))
        dataset = _ValidBatches(self._valid_recipe, owners[order], ids[order], self.micro_batch_size,
                                self.dp_rank, self.dp_size)
        # Built in this process: an evaluation reads a few batches, less than worker start-up would cost.
        return (dataset[t] for t in range(len(dataset)))


class WorkerBatches:
    """A DataLoader's worker-backed iterator with a close() that stops its workers now. Left to the garbage
    collector instead, workers linger until the iterator is collected -- which an exception raised through it
    (its traceback holds the iterator in a reference cycle) postpones to some later collection."""

    def __init__(self, iterator) -> None:
        self._iterator = iterator
        _LIVE_ITERATORS.add(iterator)

    def __iter__(self) -> "WorkerBatches":
        return self

    def __next__(self):
        return next(self._iterator)

    @property
    def worker_pids(self) -> list[int]:
        return [worker.pid for worker in self._iterator._workers]

    def close(self) -> None:
        self._iterator._shutdown_workers()


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers leave SIGTERM/SIGUSR1/SIGINT to the training process. SLURM preemption and `timeout` signal the
    whole process group; a worker dying of it would make the DataLoader raise inside the training step before
    the trainer could save its checkpoint. Workers end through _shutdown_live_iterators (or when their parent
    dies: the DataLoader's watchdog)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


# Worker-backed iterators still alive. At interpreter exit multiprocessing stops leftover workers with SIGTERM,
# which they ignore (above), and would wait for them forever; this handler, registered after multiprocessing's
# and so run before it, shuts them down the orderly way first.
_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()


@atexit.register
def _shutdown_live_iterators() -> None:
    for iterator in list(_LIVE_ITERATORS):
        iterator._shutdown_workers()


class _Counter(torch.utils.data.Sampler):
    """start, start+1, ... forever (an infinite sampler the DataLoader can prefetch from)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        return itertools.count(self.start)


def build_mlm_data(data_cfg, seed: int, micro_batch_size: int, dp_rank: int = 0, dp_size: int = 1,
                   train_samples: Optional[int] = None, tokenizer: Optional[Tokenizer] = None) -> MLMData:
    """Opens the datasets a DataConfig names, builds (or loads cached) sample indices, returns an MLMData."""
    tokenizer = tokenizer or build_tokenizer(data_cfg)
    return MLMData(data_cfg, tokenizer, seed, micro_batch_size, dp_rank, dp_size, train_samples)


__all__ = ["MLMData", "build_mlm_data"]
