"""The .bin/.idx format: round trips, the byte layout, and compatibility both ways with megatron-core."""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np
import pytest

from megabert.data.indexed_dataset import (IndexedDataset, IndexedDatasetError, IndexedDatasetWriter,
                                           optimal_dtype)


def _random_docs(rng, n_docs=40, vocab=30000):
    """Documents as lists of sequences (sentences) of random token ids."""
    return [[rng.integers(0, vocab, size=rng.integers(1, 30)) for _ in range(rng.integers(1, 4))]
            for _ in range(n_docs)]


def _write(prefix, docs, dtype=np.uint16):
    with IndexedDatasetWriter(prefix, dtype) as w:
        for doc in docs:
            w.add_document(np.concatenate(doc), [len(s) for s in doc])
        w.finalize()


def test_round_trip_returns_every_sequence_and_document(tmp_path):
    docs = _random_docs(np.random.default_rng(0))
    _write(tmp_path / "ds", docs)
    ds = IndexedDataset(tmp_path / "ds")
    flat = [s for d in docs for s in d]
    assert len(ds) == len(flat) and ds.num_documents == len(docs)
    for got, want in zip((ds[i] for i in range(len(ds))), flat):
        np.testing.assert_array_equal(got, want)
    for j, doc in enumerate(docs):
        np.testing.assert_array_equal(ds.document(j), np.concatenate(doc))
    starts, lengths = ds.document_token_spans()
    np.testing.assert_array_equal(lengths, [sum(len(s) for s in d) for d in docs])
    np.testing.assert_array_equal(ds.tokens[starts[5]:starts[5] + lengths[5]], np.concatenate(docs[5]))


def test_slices_are_zero_copy_views_of_the_memory_map(tmp_path):
    _write(tmp_path / "ds", _random_docs(np.random.default_rng(1), 5))
    ds = IndexedDataset(tmp_path / "ds")
    assert np.shares_memory(ds[2], ds.tokens) and np.shares_memory(ds.document(3), ds.tokens)
    assert not ds[2].flags.writeable


def test_idx_bytes_follow_the_mmidx_v1_layout(tmp_path):
    # Two documents: [3 tokens, 2 tokens] and [4 tokens]; int32 tokens (4 bytes each).
    with IndexedDatasetWriter(tmp_path / "ds", np.int32) as w:
        w.add_document(np.arange(5), [3, 2])
        w.add_document(np.arange(4))
        w.finalize()
    raw = (tmp_path / "ds.idx").read_bytes()
    expected = (b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 4) + struct.pack("<Q", 3)
                + struct.pack("<Q", 3) + struct.pack("<3i", 3, 2, 4) + struct.pack("<3q", 0, 12, 20)
                + struct.pack("<3q", 0, 2, 3))
    assert raw == expected
    assert (tmp_path / "ds.bin").read_bytes() == np.array([0, 1, 2, 3, 4, 0, 1, 2, 3], "<i4").tobytes()


def test_token_dtype_follows_megatron_rule():
    assert optimal_dtype(30528) is np.uint16 and optimal_dtype(65499) is np.uint16
    assert optimal_dtype(65500) is np.int32 and optimal_dtype(250000) is np.int32


def test_interrupted_writer_leaves_no_dataset(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(tmp_path / "ds", np.uint16) as w:
            w.add_document(np.arange(10))
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


def test_ids_that_do_not_fit_the_dtype_are_rejected(tmp_path):
    with IndexedDatasetWriter(tmp_path / "ds", np.uint16) as w, pytest.raises(ValueError, match="do not fit"):
        w.add_document(np.array([1, 70000]))


def test_damaged_files_give_clear_errors(tmp_path):
    _write(tmp_path / "ds", _random_docs(np.random.default_rng(2), 5))
    with pytest.raises(IndexedDatasetError, match="does not exist"):
        IndexedDataset(tmp_path / "nope")
    raw = (tmp_path / "ds.idx").read_bytes()
    (tmp_path / "ds.idx").write_bytes(raw[:-9])
    with pytest.raises(IndexedDatasetError, match="truncated"):
        IndexedDataset(tmp_path / "ds")
    (tmp_path / "ds.idx").write_bytes(b"NOTMAGIC!" + raw[9:])
    with pytest.raises(IndexedDatasetError, match="magic"):
        IndexedDataset(tmp_path / "ds")
    (tmp_path / "ds.idx").write_bytes(raw)
    bin_bytes = (tmp_path / "ds.bin").read_bytes()
    (tmp_path / "ds.bin").write_bytes(bin_bytes[:-2])
    with pytest.raises(IndexedDatasetError, match="truncated"):
        IndexedDataset(tmp_path / "ds")


def _megatron():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_megatron_reads_our_files_with_identical_tokens(tmp_path, dtype):
    mg = _megatron()
    docs = _random_docs(np.random.default_rng(3), vocab=60000 if dtype is np.uint16 else 200000)
    _write(tmp_path / "ds", docs, dtype)
    theirs = mg.IndexedDataset(str(tmp_path / "ds"))
    flat = [s for d in docs for s in d]
    assert len(theirs) == len(flat)
    np.testing.assert_array_equal(theirs.document_indices, np.cumsum([0] + [len(d) for d in docs]))
    for i, want in enumerate(flat):
        got = theirs[i]
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)


def test_we_read_files_written_by_megatrons_builder(tmp_path):
    import torch

    mg = _megatron()
    docs = _random_docs(np.random.default_rng(4))
    builder = mg.IndexedDatasetBuilder(str(tmp_path / "mg.bin"), dtype=np.uint16)
    for doc in docs:
        for seq in doc:
            builder.add_item(torch.from_numpy(seq.astype(np.int64)))
        builder.end_document()
    builder.finalize(str(tmp_path / "mg.idx"))
    ours = IndexedDataset(tmp_path / "mg")
    assert ours.num_documents == len(docs) and ours.dtype == np.uint16
    for j, doc in enumerate(docs):
        np.testing.assert_array_equal(ours.document(j), np.concatenate(doc))
