"""check_training_data (the preflight's data check): on good data it passes and counts what the loader will use."""

from __future__ import annotations

import pytest

from megabert.config import DataConfig
from megabert.data import build_mlm_data, check_training_data

from .conftest import preprocess, write_jsonl


@pytest.mark.parametrize("mode, seq_len, split", [("document", 64, "969,30,1"), ("packed", 32, "80,20,0"),
                                                  ("packed", 128, "1,1,0")])
def test_sample_counts_equal_the_loaders(tmp_path, sample_prefix, vocab_file, mode, seq_len, split):
    cfg = DataConfig(data_path=[sample_prefix], vocab_file=vocab_file, cache_dir=str(tmp_path / "cache"),
                     num_workers=0, seq_len=seq_len, sample_mode=mode, split=split)
    (summary,) = check_training_data(cfg, model_vocab_size=8192)
    data = build_mlm_data(cfg, seed=1, micro_batch_size=4)
    assert summary.train_samples == data.train_splits[0].num_samples > 0
    assert summary.valid_samples == data.valid_splits[0].num_samples > 0
    assert summary.documents == 600 and summary.dtype == "uint16"
    assert 0 <= summary.sampled_token_range[0] <= summary.sampled_token_range[1] < 8192


def test_sentence_level_and_blended_data_pass_with_loader_counts(tmp_path, sample_texts, vocab_file, sample_prefix):
    src = write_jsonl(tmp_path / "s.json", [{"text": t} for t in sample_texts[:80]])
    preprocess(["--input", str(src), "--output-prefix", str(tmp_path / "s"), "--tokenizer-type",
                "BertWordPieceLowerCase", "--vocab-file", vocab_file, "--split-sentences"])
    sentences = str(tmp_path / "s_text_sentence")
    cfg = DataConfig(data_path=["0.3", sentences, "0.7", sample_prefix], vocab_file=vocab_file,
                     cache_dir=str(tmp_path / "cache"), num_workers=0, seq_len=64, split="90,10,0")
    summaries = check_training_data(cfg)
    data = build_mlm_data(cfg, seed=1, micro_batch_size=4)
    assert [s.prefix for s in summaries] == [sentences, sample_prefix]
    assert summaries[0].sequences > summaries[0].documents == 80
    assert [s.train_samples for s in summaries] == [s.num_samples for s in data.train_splits]
    assert [s.valid_samples for s in summaries] == [s.num_samples for s in data.valid_splits]


def test_no_validation_share_passes_when_evaluation_is_off(tmp_path, sample_prefix, vocab_file):
    cfg = DataConfig(data_path=[sample_prefix], vocab_file=vocab_file, split="1,0,0")
    (summary,) = check_training_data(cfg, need_validation=False)
    assert summary.valid_samples == 0 and summary.train_samples == 600
