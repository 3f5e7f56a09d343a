"""Checks the data a run's config names before anything starts: ``check_training_data``.

The trainer's preflight calls it so that a wrong prefix, a damaged or foreign dataset, data tokenized with another
vocabulary or a split that leaves no training or validation documents fails in seconds, naming the field and the
fix, instead of minutes into a run (or at its first evaluation). Everything here reads the index and a bounded
sample of tokens; no sample index is built and nothing is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from megabert.config import ConfigError
from megabert.data.indexed_dataset import IndexedDataset, IndexedDatasetError, bin_path, idx_path
from megabert.data.samples import parse_data_path, split_ranges
from megabert.data.tokenizer import Tokenizer, TokenizerError, build_tokenizer

TOKEN_SAMPLE_HEAD = 1 << 20
"""Tokens read from the start of each dataset for the vocabulary check."""
TOKEN_SAMPLE_WINDOWS, TOKEN_SAMPLE_WINDOW = 32, 1 << 15
"""Further windows, spread evenly over the rest of the .bin: ~2 M tokens read in all, whatever the size."""


class DataCheckError(ConfigError):
    """The data named by the config cannot train; the message names the field, the file and the fix."""


@dataclass
class DatasetSummary:
    """What the preflight found in one dataset (for its log line)."""

    prefix: str
    documents: int
    sequences: int
    tokens: int
    dtype: str
    sampled_token_range: tuple[int, int]  # (min, max) over the bounded sample
    train_samples: int
    valid_samples: int


def sampled_token_range(ds: IndexedDataset) -> tuple[int, int]:
    """(min, max) token id over the first TOKEN_SAMPLE_HEAD tokens and TOKEN_SAMPLE_WINDOWS evenly spaced windows.

    A bounded read (~2 M tokens, a few milliseconds) that catches data tokenized with another vocabulary: such
    data holds ids beyond the vocabulary nearly everywhere, so any sample finds them."""
    tokens = ds.tokens
    if tokens.size == 0:
        return 0, 0
    pieces = [tokens[:TOKEN_SAMPLE_HEAD]]
    if tokens.size > TOKEN_SAMPLE_HEAD:
        starts = np.linspace(TOKEN_SAMPLE_HEAD, max(tokens.size - TOKEN_SAMPLE_WINDOW, TOKEN_SAMPLE_HEAD),
                             TOKEN_SAMPLE_WINDOWS).astype(np.int64)
        pieces += [tokens[s:s + TOKEN_SAMPLE_WINDOW] for s in starts]
    return min(int(p.min()) for p in pieces if p.size), max(int(p.max()) for p in pieces if p.size)


def check_token_ids(ds: IndexedDataset, vocab_size: int, vocab_source: str = "the tokenizer's vocabulary") -> \
        tuple[int, int]:
    """Raises ValueError unless the dataset holds integer token ids that fit ``vocab_size`` (bounded sample);
    returns the sampled (min, max)."""
    if not np.issubdtype(ds.dtype, np.integer):
        raise ValueError(f"{idx_path(ds.prefix)!r} stores {ds.dtype} values, not token ids; a token dataset is "
                         f"uint16 or int32: re-run tools/preprocess_data.py")
    low, high = sampled_token_range(ds)
    if low < 0:
        raise ValueError(f"{bin_path(ds.prefix)!r} holds token id {low} (negative): a corrupt .bin or a wrong dtype "
                         f"code; re-run tools/preprocess_data.py")
    if high >= vocab_size:
        raise ValueError(f"{ds.prefix!r} holds token id {high} >= {vocab_source} ({vocab_size}); was it "
                         f"preprocessed with another tokenizer? Re-run tools/preprocess_data.py with the vocabulary "
                         f"of data.vocab_file / data.tokenizer_model, or point those at the one it was made with")
    return low, high


def document_lengths(ds: IndexedDataset) -> np.ndarray:
    """Tokens per document (the index's lengths when each document is one sequence)."""
    if ds.one_sequence_per_document():
        return np.asarray(ds.sequence_lengths)
    return ds.document_token_spans()[1]


def split_sample_counts(lengths: np.ndarray, split: str, sample_mode: str, seq_len: int) -> dict[str, int]:
    """Samples per split as the loader will count them: non-empty documents (``document`` mode), or full
    ``seq_len - 1``-token windows of the ``doc [SEP] doc [SEP] ...`` stream (``packed``)."""
    counts = {}
    for name, (lo, hi) in split_ranges(len(lengths), split).items():
        part = lengths[lo:hi]
        nonempty = part[part > 0]
        if sample_mode == "packed":
            counts[name] = int((nonempty.astype(np.int64) + 1).sum()) // (seq_len - 1)
        else:
            counts[name] = int(nonempty.size)
    return counts


def check_training_data(data_cfg, model_vocab_size: Optional[int] = None, need_validation: bool = True,
                        tokenizer: Optional[Tokenizer] = None) -> list[DatasetSummary]:
    """Checks that the data a DataConfig names can train; raises DataCheckError (a ConfigError) otherwise.

    * ``data.data_path`` parses, and every prefix has its .bin and .idx;
    * each index is valid (the open-time check: header, pointers, lengths against the .bin size, documents);
    * the tokenizer files load; tokens are integer ids below the tokenizer's vocabulary (and below
      ``model_vocab_size`` when given, which must hold the tokenizer's vocabulary), on a bounded sample;
    * ``data.split`` leaves training samples in every dataset given a weight, and some in total; with
      ``need_validation`` (evaluation on), validation samples in total.

    Costs one pass over each index (tens of milliseconds per 10 M sequences on one CPU core) and ~2 M tokens read
    per dataset; builds no sample index. Returns one DatasetSummary per dataset, for the run's log."""
    if hasattr(data_cfg, "validate"):
        data_cfg.validate()  # the fields on their own (split syntax, sample_mode, seq_len, ...): ConfigError
    try:
        prefixes, weights = parse_data_path(data_cfg.data_path)
    except ValueError as err:
        raise DataCheckError(f"data.data_path: {err}") from err
    for prefix in prefixes:
        missing = [path for path in (bin_path(prefix), idx_path(prefix)) if not os.path.isfile(path)]
        if missing:
            raise DataCheckError(f"data.data_path: {' and '.join(missing)} not found; data paths are prefixes "
                                 f"without .bin/.idx: preprocess the corpus first (tools/preprocess_data.py "
                                 f"--output-prefix ...; the prefix gets _text_document appended)")
    try:
        tokenizer = tokenizer or build_tokenizer(data_cfg)
    except (TokenizerError, OSError) as err:
        raise DataCheckError(f"data.tokenizer_type / vocab_file / tokenizer_model: {err}") from err
    vocab = tokenizer.vocab_size
    if model_vocab_size is not None and model_vocab_size < vocab:
        raise DataCheckError(f"model.vocab_size ({model_vocab_size}) is smaller than the tokenizer's vocabulary "
                             f"({vocab}); set it to {-(-vocab // 64) * 64} (the vocabulary padded to a multiple "
                             f"of 64)")
    summaries = []
    for prefix in prefixes:
        try:
            ds = IndexedDataset(prefix)
            token_range = check_token_ids(ds, vocab)
        except (IndexedDatasetError, ValueError) as err:
            raise DataCheckError(f"data.data_path: {err}") from err
        counts = split_sample_counts(document_lengths(ds), data_cfg.split, data_cfg.sample_mode, data_cfg.seq_len)
        summaries.append(DatasetSummary(prefix, ds.num_documents, len(ds), int(ds.tokens.size), str(ds.dtype),
                                        token_range, counts["train"], counts["valid"]))
    if sum(s.train_samples for s in summaries) == 0:
        raise DataCheckError(
            f"data.split ({data_cfg.split!r}) leaves no training samples in {[s.prefix for s in summaries]} "
            f"({sum(s.documents for s in summaries)} documents); give the train share more weight, or check the "
            f"preprocessing summary for skipped documents")
    for s, w in zip(summaries, weights or [0.0] * len(summaries)):  # unweighted: mixed by size, empty ones unused
        if w > 0 and s.train_samples == 0:
            raise DataCheckError(
                f"data.split ({data_cfg.split!r}) leaves {s.prefix!r} ({s.documents} documents) no training "
                f"samples{' of ' + str(data_cfg.seq_len - 1) + ' tokens' if data_cfg.sample_mode == 'packed' else ''}"
                f"; give it more documents or the train share more weight, or give it weight 0 in data.data_path")
    if need_validation and sum(s.valid_samples for s in summaries) == 0:
        raise DataCheckError(
            f"data.split ({data_cfg.split!r}) leaves no validation samples in {[s.prefix for s in summaries]}, but "
            f"evaluation is on; give the validation share a weight (e.g. '969,30,1') or set "
            f"logging.eval_interval 0")
    return summaries
