"""Vectorised MLM masking whose randomness is a pure function of (seed, sample key, position).

Every random number is a counter-based hash (splitmix64) of the sample's 64-bit key and the token position, so
a sample's mask never depends on batch composition, world size, worker count or the resume point: the same
sample in the same epoch is masked the same way everywhere. One batch costs a handful of numpy passes over
[B, S] uint64 arrays, no per-token Python.

BERT's recipe: each eligible token (not special, not padding) is selected with probability ``mask_prob``; a
selected token becomes [MASK] 80% of the time, a random non-special token 10%, itself 10%; labels hold the
original id at selected positions and -100 elsewhere. With ``whole_word`` the selection is drawn once per word
(a head token and its '##' continuations) and shared by all its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_STREAM_SELECT = np.uint64(0x5E1EC7)
_STREAM_ACTION = np.uint64(0xAC7102)
_TWO_POW_MINUS_53 = 1.0 / (1 << 53)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Bijective 64-bit mixer (Steele et al.); array in, array out, wrapping arithmetic."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def sample_keys(seed: int, stream: int, dataset_index: np.ndarray, sample_number: np.ndarray) -> np.ndarray:
    """One 64-bit key per sample from (seed, stream, dataset, per-dataset sample counter incl. epoch)."""
    base = splitmix64(np.array([(seed & 0xFFFFFFFF) << 8 | (stream & 0xFF)], dtype=np.uint64))
    with np.errstate(over="ignore"):
        mixed = splitmix64(base ^ (np.asarray(dataset_index, dtype=np.uint64) << np.uint64(48)))
        return splitmix64(mixed + np.asarray(sample_number, dtype=np.uint64))


def _uniform(keys: np.ndarray, seq_len: int, stream: np.uint64) -> np.ndarray:
    """[B, S] hashes of (key, position, stream)."""
    positions = np.arange(seq_len, dtype=np.uint64)[None, :] * _GOLDEN
    with np.errstate(over="ignore"):
        return splitmix64((keys[:, None] ^ stream) + positions)


@dataclass(frozen=True)
class MaskingSpec:
    """What masking needs to know about the vocabulary, as lookup tables indexed by token id."""

    mask_id: int
    is_special: np.ndarray  # bool [V]: never masked (padding included)
    is_continuation: np.ndarray  # bool [V]: continues the previous word ('##xx')
    replacement_ids: np.ndarray  # int64 [R]: random replacements are drawn from these (non-special ids)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "MaskingSpec":
        special = np.zeros(tokenizer.vocab_size, dtype=bool)
        special[list(tokenizer.special_ids)] = True
        return cls(tokenizer.mask_id, special, np.asarray(tokenizer.word_continuation, dtype=bool),
                   np.flatnonzero(~special).astype(np.int64))


def mask_tokens(input_ids: np.ndarray, keys: np.ndarray, mask_prob: float, spec: MaskingSpec,
                whole_word: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Masks a [B, S] int64 batch in place of a copy; returns (masked input ids, labels)."""
    batch, seq_len = input_ids.shape
    eligible = ~spec.is_special[input_ids]  # [B, S]
    select_bits = _uniform(keys, seq_len, _STREAM_SELECT)
    select_u = (select_bits >> np.uint64(11)).astype(np.float64) * _TWO_POW_MINUS_53  # [B, S] in [0, 1)
    if whole_word:
        # Each continuation token takes the draw of its word's head: the last head at or before it. A head is an
        # eligible token that starts a word, or any eligible token right after a special one ([CLS], [SEP]),
        # since a document's first word carries no word-start marker in byte-level BPE vocabularies.
        after_special = np.ones_like(eligible)
        after_special[:, 1:] = ~eligible[:, :-1]
        head = eligible & (~spec.is_continuation[input_ids] | after_special)
        positions = np.arange(seq_len)[None, :]
        head_pos = np.maximum.accumulate(np.where(head, positions, -1), axis=1)  # [B, S]
        take = np.where(head_pos >= 0, head_pos, positions)
        select_u = np.take_along_axis(select_u, take, axis=1)
    selected = eligible & (select_u < mask_prob)
    action_bits = _uniform(keys, seq_len, _STREAM_ACTION)
    action_u = (action_bits >> np.uint64(40)).astype(np.float64) * (1.0 / (1 << 24))  # [B, S] in [0, 1)
    to_mask = selected & (action_u < 0.8)
    to_random = selected & (action_u >= 0.9)
    labels = np.where(selected, input_ids, IGNORE_INDEX)
    out = np.where(to_mask, spec.mask_id, input_ids)
    if to_random.any():
        pick = (action_bits[to_random] & np.uint64(0xFFFFFFFF)) % np.uint64(len(spec.replacement_ids))
        out[to_random] = spec.replacement_ids[pick.astype(np.int64)]
    return out, labels
