"""build_mlm_data: sample layout, resume, data-parallel invariance, workers, blending, caching, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from megabert.config import DataConfig
from megabert.data import IGNORE_INDEX, IndexedDataset, build_mlm_data
from megabert.data.samples import BlendIndex, split_ranges

from .conftest import preprocess, write_jsonl


def _cfg(prefixes, vocab_file, tmp_path, **kw):
    return DataConfig(data_path=list(prefixes), vocab_file=vocab_file, cache_dir=str(tmp_path / "cache"),
                      num_workers=kw.pop("num_workers", 0), seq_len=kw.pop("seq_len", 64), **kw)


def _unmask(batch):
    """Original token ids: labels where a position was masked, else the input."""
    return torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])


def _take(it, n):
    return list(itertools.islice(it, n))


def test_document_mode_rows_are_cls_document_sep_then_padding(tmp_path, sample_prefix, vocab_file):
    cfg = _cfg([sample_prefix], vocab_file, tmp_path, seq_len=64)
    data = build_mlm_data(cfg, seed=17, micro_batch_size=8)
    tok, ds = data.tokenizer, IndexedDataset(sample_prefix)
    split = data.train_splits[0]
    batch = next(data.train_batches())
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert all(v.dtype == torch.int64 and v.shape == (8, 64) for v in batch.values())
    ids = split.sample_ids(np.arange(8))
    for row, tokens, mask in zip(_unmask(batch), (ds.document(split.doc_ids[i]) for i in ids),
                                 batch["attention_mask"]):
        body = tokens[:62].tolist()
        want = [tok.cls_id] + body + [tok.sep_id] + [tok.pad_id] * (62 - len(body))
        assert row.tolist() == want
        assert mask.tolist() == [1] * (len(body) + 2) + [0] * (62 - len(body))
    assert (batch["token_type_ids"] == 0).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_packed_mode_rows_are_full_and_follow_the_document_stream(tmp_path, sample_prefix, vocab_file):
    cfg = _cfg([sample_prefix], vocab_file, tmp_path, seq_len=32, sample_mode="packed")
    data = build_mlm_data(cfg, seed=17, micro_batch_size=4)
    tok, ds, split = data.tokenizer, IndexedDataset(sample_prefix), data.train_splits[0]
    stream = np.concatenate([np.append(ds.document(d), tok.sep_id) for d in split.doc_ids])
    assert split.num_samples == len(stream) // 31
    rows = np.zeros((6, 32), dtype=np.int64)
    split.fill_rows(np.array([0, 1, 2, 7, 100, split.num_samples - 1]), rows, tok.cls_id, tok.sep_id)
    for row, s in zip(rows, [0, 1, 2, 7, 100, split.num_samples - 1]):
        assert row[0] == tok.cls_id and row[1:].tolist() == stream[s * 31:(s + 1) * 31].tolist()
    assert (next(data.train_batches())["attention_mask"] == 1).all()


def test_resume_after_n_samples_gives_the_same_next_batches(tmp_path, sample_prefix, vocab_file):
    cfg = _cfg([sample_prefix], vocab_file, tmp_path)
    data = build_mlm_data(cfg, seed=17, micro_batch_size=8)
    full = _take(data.train_batches(0), 8)
    resumed = _take(data.train_batches(consumed_samples=5 * 8), 3)
    for a, b in zip(full[5:], resumed):
        for k in a:
            assert torch.equal(a[k], b[k])
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        data.train_batches(consumed_samples=12)


def test_global_batch_is_the_same_for_any_data_parallel_size(tmp_path, sample_prefix, vocab_file):
    """Global batch 16: dp=1 x micro 16 == union of dp=2 x micro 4 x 2 accumulation steps, resume included."""
    cfg = _cfg([sample_prefix], vocab_file, tmp_path)

    def rows(batches):
        return sorted(tuple(r) for b in batches for r in torch.cat([b["input_ids"], b["labels"]], 1).tolist())

    single = build_mlm_data(cfg, seed=17, micro_batch_size=16)
    ranks = [build_mlm_data(cfg, seed=17, micro_batch_size=4, dp_rank=r, dp_size=2) for r in range(2)]
    for consumed in (0, 32):  # the first global batch, and the one after resuming at 2 global batches
        want = rows(_take(single.train_batches(consumed), 1))
        got = rows([b for d in ranks for b in _take(d.train_batches(consumed), 2)])
        assert got == want


def test_workers_give_the_same_batches_as_the_main_process(tmp_path, sample_prefix, vocab_file):
    cfg = _cfg([sample_prefix], vocab_file, tmp_path, whole_word_masking=True)
    inline = _take(build_mlm_data(cfg, seed=3, micro_batch_size=8).train_batches(16), 5)
    cfg.num_workers = 2
    workers = _take(build_mlm_data(cfg, seed=3, micro_batch_size=8).train_batches(16), 5)
    for a, b in zip(inline, workers):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_each_epoch_is_a_new_permutation_of_all_documents(tmp_path, sample_prefix, vocab_file):
    data = build_mlm_data(_cfg([sample_prefix], vocab_file, tmp_path), seed=17, micro_batch_size=8)
    split = data.train_splits[0]
    n = split.num_samples
    e0, e1 = split.sample_ids(np.arange(n)), split.sample_ids(np.arange(n, 2 * n))
    assert sorted(e0) == list(range(n)) == sorted(e1) and not np.array_equal(e0, e1)
    again = build_mlm_data(_cfg([sample_prefix], vocab_file, tmp_path), seed=17, micro_batch_size=8)
    np.testing.assert_array_equal(again.train_splits[0].sample_ids(np.arange(n)), e0)
    other = build_mlm_data(_cfg([sample_prefix], vocab_file, tmp_path), seed=18, micro_batch_size=8)
    assert not np.array_equal(other.train_splits[0].sample_ids(np.arange(n)), e0)


def test_splits_are_disjoint_document_ranges(tmp_path, sample_prefix, vocab_file):
    assert split_ranges(1000, "969,30,1") == {"train": (0, 969), "valid": (969, 999), "test": (999, 1000)}
    data = build_mlm_data(_cfg([sample_prefix], vocab_file, tmp_path, split="80,20,0"), seed=1,
                          micro_batch_size=8)
    train, valid = set(data.train_splits[0].doc_ids.tolist()), set(data.valid_splits[0].doc_ids.tolist())
    assert not train & valid and len(valid) == 120 and len(train) == 480


def test_sample_indices_are_cached_by_parameters_and_reused(tmp_path, sample_prefix, vocab_file, monkeypatch):
    from megabert.data import samples

    monkeypatch.setattr(samples, "CACHE_PERMUTATION_MIN", 1000)  # cache this small split's epoch permutations
    cfg = _cfg([sample_prefix], vocab_file, tmp_path, sample_mode="packed")
    first = build_mlm_data(cfg, seed=5, micro_batch_size=8)
    next(first.train_batches())
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any("_train_packed_" in f and f.endswith("_order.npy") for f in files)
    assert any("shuffle_seed5" in f for f in files)

    def no_rebuild(*a, **k):
        raise AssertionError("index rebuilt although cached")

    monkeypatch.setattr(np.random, "default_rng", no_rebuild)  # every index build draws from default_rng
    cached = build_mlm_data(cfg, seed=5, micro_batch_size=8)
    assert torch.equal(next(cached.train_batches())["labels"], next(first.train_batches())["labels"])
    monkeypatch.undo()
    monkeypatch.setattr(samples, "CACHE_PERMUTATION_MIN", 1000)
    build_mlm_data(_cfg([sample_prefix], vocab_file, tmp_path, sample_mode="packed", seq_len=32), seed=5,
                   micro_batch_size=8)
    assert len(list((tmp_path / "cache").iterdir())) > len(files)  # another seq_len: another key


def test_blending_honours_weights_in_every_prefix(tmp_path, sample_texts, vocab_file):
    prefixes = []
    for name, texts in (("a", sample_texts[:300]), ("b", sample_texts[300:400])):
        src = write_jsonl(tmp_path / f"{name}.json", [{"text": t} for t in texts])
        preprocess(["--input", str(src), "--output-prefix", str(tmp_path / name), "--tokenizer-type",
                    "BertWordPieceLowerCase", "--vocab-file", vocab_file])
        prefixes.append(str(tmp_path / f"{name}_text_document"))
    blend = BlendIndex([0.7, 0.3], period=1000)
    d, k = blend.lookup(np.arange(5000))
    counts = np.cumsum(d == 1)
    assert np.all(np.abs(counts - 0.3 * np.arange(1, 5001)) <= 1.0)  # within one sample at every prefix
    assert np.array_equal(np.sort(k[d == 1]), np.arange((d == 1).sum()))  # each dataset's counter is dense
    data = build_mlm_data(_cfg(["0.25", prefixes[0], "0.75", prefixes[1]], vocab_file, tmp_path), seed=2,
                          micro_batch_size=40)
    batch = next(data.train_batches())
    b_docs = {tuple(IndexedDataset(prefixes[1]).document(i)[:20]) for i in range(100)}
    from_b = sum(tuple(r[1:21]) in b_docs for r in _unmask(batch).tolist())
    assert from_b == 30


def test_validation_is_deterministic_and_uses_eval_mask_prob(tmp_path, sample_prefix, vocab_file):
    cfg = _cfg([sample_prefix], vocab_file, tmp_path, split="50,50,0", eval_mask_prob=0.15)
    data = build_mlm_data(cfg, seed=17, micro_batch_size=16)
    a, b = list(data.valid_batches()), list(data.valid_batches())
    assert len(a) == 300 // 16 and all(torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b))
    labels = torch.cat([x["labels"] for x in a])
    real = torch.cat([x["attention_mask"] for x in a]).sum() - 2 * labels.shape[0]
    assert 0.13 < (labels != IGNORE_INDEX).sum() / real < 0.17
    ranks = [build_mlm_data(cfg, seed=17, micro_batch_size=16, dp_rank=r, dp_size=3) for r in range(3)]
    assert len({len(list(d.valid_batches())) for d in ranks}) == 1  # every rank evaluates the same count


def test_a_bad_batch_layout_is_named(tmp_path, sample_prefix, vocab_file):
    """(Bad data and data paths: tests/data/test_bad_inputs.py.)"""
    with pytest.raises(ValueError, match="dp_rank"):
        build_mlm_data(_cfg([sample_prefix], vocab_file, tmp_path), 1, 8, dp_rank=2, dp_size=2)


def test_sentence_level_datasets_give_whole_documents(tmp_path, sample_texts, vocab_file):
    src = write_jsonl(tmp_path / "s.json", [{"text": t} for t in sample_texts[:50]])
    preprocess(["--input", str(src), "--output-prefix", str(tmp_path / "s"), "--tokenizer-type",
                "BertWordPieceLowerCase", "--vocab-file", vocab_file, "--split-sentences"])
    prefix = str(tmp_path / "s_text_sentence")
    ds = IndexedDataset(prefix)
    assert len(ds) > ds.num_documents and not ds.one_sequence_per_document()
    data = build_mlm_data(_cfg([prefix], vocab_file, tmp_path, split="1,0,0", seq_len=256), 1, 8)
    split = data.train_splits[0]
    rows = np.zeros((5, 256), dtype=np.int64)
    split.fill_rows(np.arange(5), rows, 2, 3)
    for r, doc in zip(rows, split.doc_ids[:5]):
        body = ds.document(doc)[:254].tolist()
        assert r[1:1 + len(body)].tolist() == body and r[1 + len(body)] == 3


def test_pickled_loader_state_is_small_and_builds_the_same_batches(tmp_path, sample_prefix, vocab_file):
    """What a 'spawn' DataLoader worker receives: index arrays re-open from the cache instead of being copied."""
    import pickle

    from megabert.data.loader import _TrainBatches

    data = build_mlm_data(_cfg([sample_prefix], vocab_file, tmp_path), seed=4, micro_batch_size=8)
    batches = _TrainBatches(data._train_recipe, data.blend, 8, 0, 1)
    split = data.train_splits[0]
    assert split.doc_ids.nbytes > 4000 and len(pickle.dumps(split)) < 1000  # arguments only, no index arrays
    blob = pickle.dumps(batches)
    clone = pickle.loads(blob)
    assert all(torch.equal(batches[3][k], clone[3][k]) for k in batches[3])


def test_workers_survive_stop_signals_meant_for_the_trainer(tmp_path, sample_prefix, vocab_file):
    """SLURM preemption signals the whole process group: workers must leave SIGTERM to the trainer."""
    import os
    import signal

    cfg = _cfg([sample_prefix], vocab_file, tmp_path, num_workers=1)
    data = build_mlm_data(cfg, seed=3, micro_batch_size=8)
    it = data.train_batches()
    first = _take(it, 2)
    for pid in it.worker_pids:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGUSR1)
    later = _take(it, 12)  # more than the prefetched batches: the workers must still be producing
    cfg.num_workers = 0
    want = _take(build_mlm_data(cfg, seed=3, micro_batch_size=8).train_batches(), 14)
    for a, b in zip(first + later, want):
        assert torch.equal(a["input_ids"], b["input_ids"])


def test_a_process_that_leaves_a_worker_iterator_open_still_exits(tmp_path, sample_prefix, vocab_file):
    """Workers ignore SIGTERM (above), so the exit-time SIGTERM of multiprocessing cannot stop them: the loader
    must shut its live workers down itself, or the process hangs after its last line."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        from megabert.config import DataConfig
        from megabert.data import build_mlm_data
        cfg = DataConfig(data_path=[{sample_prefix!r}], vocab_file={vocab_file!r}, num_workers=1, seq_len=64,
                         cache_dir={str(tmp_path / "cache")!r})
        it = build_mlm_data(cfg, seed=1, micro_batch_size=4).train_batches()
        print(next(it)["input_ids"].shape[0])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "4"


def test_re_preprocessing_a_prefix_invalidates_its_cached_indices(tmp_path, sample_texts, vocab_file):
    """Same documents, other lengths (here: --append-eod): cached packed offsets must not be reused."""
    src = write_jsonl(tmp_path / "a.json", [{"text": t} for t in sample_texts[:40]])
    args = ["--input", str(src), "--output-prefix", str(tmp_path / "a"), "--tokenizer-type",
            "BertWordPieceLowerCase", "--vocab-file", vocab_file]
    preprocess(args)
    cfg = _cfg([str(tmp_path / "a_text_document")], vocab_file, tmp_path, sample_mode="packed", split="1,0,0")
    before = build_mlm_data(cfg, seed=1, micro_batch_size=4).train_splits[0].num_samples
    preprocess(args + ["--append-eod"])
    split = build_mlm_data(cfg, seed=1, micro_batch_size=4).train_splits[0]
    ds = IndexedDataset(tmp_path / "a_text_document")
    assert split.stream_end[-1] == sum(len(ds.document(d)) + 1 for d in range(ds.num_documents))
    assert split.num_samples >= before
