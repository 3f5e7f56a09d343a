"""MLM masking: rates, 80/10/10, never special or padding, whole words, determinism per sample key."""

from __future__ import annotations

import numpy as np
import pytest

from megabert.data import load_tokenizer
from megabert.data.masking import IGNORE_INDEX, MaskingSpec, mask_tokens, sample_keys


@pytest.fixture(scope="module")
def tok(vocab_file):
    return load_tokenizer("BertWordPieceLowerCase", vocab_file)


@pytest.fixture(scope="module")
def spec(tok):
    return MaskingSpec.from_tokenizer(tok)


def _random_batch(tok, rows=2048, width=128, seed=0):
    """[CLS] random tokens [SEP] [PAD]... with random lengths."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, tok.vocab_size, size=(rows, width))
    lengths = rng.integers(10, width, size=rows)
    ids[:, 0] = tok.cls_id
    ids[np.arange(rows), lengths - 1] = tok.sep_id
    ids[np.arange(width)[None, :] >= lengths[:, None]] = tok.pad_id
    return ids


@pytest.mark.parametrize("prob", [0.3, 0.15])
def test_rate_and_80_10_10_within_statistical_tolerance(tok, spec, prob):
    ids = _random_batch(tok)
    keys = sample_keys(17, 1, np.zeros(len(ids), np.int64), np.arange(len(ids)))
    out, labels = mask_tokens(ids, keys, prob, spec)
    eligible = ~spec.is_special[ids]
    selected = labels != IGNORE_INDEX
    n = eligible.sum()
    rate = selected.sum() / n
    assert abs(rate - prob) < 4 * np.sqrt(prob * (1 - prob) / n)
    np.testing.assert_array_equal(labels[selected], ids[selected])
    k = selected.sum()
    masked = (out[selected] == tok.mask_id).mean()
    kept = (out[selected] == ids[selected]).mean()
    replaced = 1 - masked - kept
    for got, want in ((masked, 0.8), (replaced, 0.1), (kept, 0.1)):
        assert abs(got - want) < 4 * np.sqrt(want * (1 - want) / k), (masked, replaced, kept)
    assert not spec.is_special[out[selected & (out != tok.mask_id)]].any()  # replacements are ordinary tokens
    np.testing.assert_array_equal(out[~selected], ids[~selected])


def test_special_tokens_and_padding_are_never_masked(tok, spec):
    ids = _random_batch(tok, rows=512)
    keys = sample_keys(3, 1, np.zeros(len(ids), np.int64), np.arange(len(ids)))
    out, labels = mask_tokens(ids, keys, 0.9, spec)
    special = np.isin(ids, [tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id])
    assert (labels[special] == IGNORE_INDEX).all() and (out[special] == ids[special]).all()


def test_whole_word_masking_selects_all_pieces_of_a_word_or_none(tok, spec, sample_texts):
    rows = [[tok.cls_id] + tok.encode(t)[:126] + [tok.sep_id] for t in sample_texts[:300]]
    ids = np.full((len(rows), 128), tok.pad_id, dtype=np.int64)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = row
    keys = sample_keys(5, 1, np.zeros(len(ids), np.int64), np.arange(len(ids)))
    _, labels = mask_tokens(ids, keys, 0.3, spec, whole_word=True)
    selected = labels != IGNORE_INDEX
    cont = spec.is_continuation[ids] & ~spec.is_special[ids]
    assert cont.sum() > 1000  # the corpus has many multi-piece words
    # every continuation piece shares the decision of the piece before it (its head or an earlier continuation)
    prev = np.roll(selected, 1, axis=1)
    assert (selected[:, 1:][cont[:, 1:]] == prev[:, 1:][cont[:, 1:]]).all()
    rate = selected.sum() / (~spec.is_special[ids]).sum()
    assert 0.27 < rate < 0.33


def test_mask_depends_only_on_the_sample_key_not_on_the_batch(tok, spec):
    ids = _random_batch(tok, rows=64)
    keys = sample_keys(11, 1, np.zeros(64, np.int64), np.arange(64))
    out, labels = mask_tokens(ids, keys, 0.3, spec)
    perm = np.random.default_rng(0).permutation(64)[:20]
    out_p, labels_p = mask_tokens(ids[perm], keys[perm], 0.3, spec)
    np.testing.assert_array_equal(out_p, out[perm])
    np.testing.assert_array_equal(labels_p, labels[perm])
    other = sample_keys(12, 1, np.zeros(64, np.int64), np.arange(64))  # another seed
    assert not np.array_equal(mask_tokens(ids, other, 0.3, spec)[1], labels)
    next_epoch = sample_keys(11, 1, np.zeros(64, np.int64), np.arange(64) + 1000)  # same doc, later epoch
    assert not np.array_equal(mask_tokens(ids, next_epoch, 0.3, spec)[1], labels)


def test_whole_word_groups_stop_at_special_tokens(tok, spec):
    """A continuation piece right after [SEP] starts its own word instead of joining the previous document's."""
    cont = int(np.flatnonzero(spec.is_continuation)[0])
    word = int(np.flatnonzero(~spec.is_continuation & ~spec.is_special)[10])
    row = [tok.cls_id, word] + [cont] * 3 + [tok.sep_id] + [cont] * 3 + [tok.sep_id]
    ids = np.array([row] * 4000, dtype=np.int64)
    keys = sample_keys(9, 1, np.zeros(len(ids), np.int64), np.arange(len(ids)))
    _, labels = mask_tokens(ids, keys, 0.5, spec, whole_word=True)
    selected = labels != IGNORE_INDEX
    assert (selected[:, 1:5] == selected[:, [1]]).all() and (selected[:, 6:9] == selected[:, [6]]).all()
    both = (selected[:, 1] == selected[:, 6]).mean()
    assert 0.4 < both < 0.6  # independent draws for the two words (0.5 expected), not one shared draw
