"""tools/preprocess_data.py: token fidelity, worker invariance, options, bad input per reason, atomic outputs."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from megabert.data import IndexedDataset, load_tokenizer
from megabert.data.jsonl import InputError

from .conftest import preprocess, write_jsonl

WP = ["--tokenizer-type", "BertWordPieceLowerCase"]


def _records(texts):
    return [{"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://example.org/{i}"}
            for i, t in enumerate(texts)]


def test_tokens_equal_the_tokenizer_output_across_gzip_plain_and_globs(tmp_path, sample_texts, vocab_file):
    texts = sample_texts[:60]
    write_jsonl(tmp_path / "c4-train.00000-of-00002.json.gz", _records(texts[:30]))
    write_jsonl(tmp_path / "c4-train.00001-of-00002.json", _records(texts[30:]))
    summary = preprocess(["--input", str(tmp_path / "c4-train.*"), "--output-prefix", str(tmp_path / "out"),
                          *WP, "--vocab-file", vocab_file])
    ds = IndexedDataset(tmp_path / "out_text_document")
    tok = load_tokenizer("BertWordPieceLowerCase", vocab_file)
    assert ds.num_documents == len(texts) == summary["documents"] and ds.dtype == np.uint16
    for j, text in enumerate(texts):
        assert ds.document(j).tolist() == tok.encode(text)
    assert summary["tokens"] == int(ds.sequence_lengths.sum())


def test_output_is_identical_for_one_and_two_workers(tmp_path, sample_texts, vocab_file):
    src = write_jsonl(tmp_path / "in.json.gz", _records(sample_texts[:200]))
    for workers in ("1", "2"):
        preprocess(["--input", str(src), "--output-prefix", str(tmp_path / f"w{workers}"), *WP, "--vocab-file",
                    vocab_file, "--workers", workers, "--chunk-lines", "16"])
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"w1_text_document{ext}").read_bytes() == (tmp_path / f"w2_text_document{ext}").read_bytes()


def test_sentence_split_eod_and_several_json_keys(tmp_path, vocab_file):
    rows = [{"text": "The cat sat. The dog ran! Did it?", "title": "Pets"},
            {"text": "One sentence only", "title": "Single"}]
    src = write_jsonl(tmp_path / "in.json", rows)
    preprocess(["--input", str(src), "--output-prefix", str(tmp_path / "o"), *WP, "--vocab-file", vocab_file,
                "--json-keys", "text", "title", "--split-sentences", "--append-eod"])
    tok = load_tokenizer("BertWordPieceLowerCase", vocab_file)
    text = IndexedDataset(tmp_path / "o_text_sentence")
    assert text.document_indices.tolist() == [0, 3, 4]  # three sentences, then one
    assert text[0].tolist() == tok.encode("The cat sat.")
    assert text[2].tolist() == tok.encode("Did it?") + [tok.sep_id]  # EOD closes the document
    title = IndexedDataset(tmp_path / "o_title_sentence")
    assert title.document(1).tolist() == tok.encode("Single") + [tok.sep_id]


def test_sentencepiece_and_tokenizer_json_models(tmp_path, sample_texts, vocab_file):
    import train_tokenizer

    corpus = write_jsonl(tmp_path / "corpus.json.gz", _records(sample_texts[:300]))
    train_tokenizer.main(["--input", str(corpus), "--type", "sentencepiece", "--vocab-size", "500",
                          "--output-dir", str(tmp_path)])
    preprocess(["--input", str(corpus), "--output-prefix", str(tmp_path / "sp"), "--tokenizer-type",
                "SentencePieceTokenizer", "--tokenizer-model", str(tmp_path / "spm.model")])
    sp = load_tokenizer("SentencePieceTokenizer", tokenizer_model=str(tmp_path / "spm.model"))
    assert sp.vocab_size % 64 == 0 and sp.pad_id == 0
    assert IndexedDataset(tmp_path / "sp_text_document").document(3).tolist() == sp.encode(sample_texts[3])
    # A tokenizer.json (here: our WordPiece saved by `tokenizers`) through --tokenizer-type HuggingFaceTokenizer.
    load_tokenizer("BertWordPieceLowerCase", vocab_file)._tok.save(str(tmp_path / "tokenizer.json"))
    preprocess(["--input", str(corpus), "--output-prefix", str(tmp_path / "hf"), "--tokenizer-type",
                "HuggingFaceTokenizer", "--tokenizer-model", str(tmp_path / "tokenizer.json")])
    assert (IndexedDataset(tmp_path / "hf_text_document").tokens.tolist()
            == IndexedDataset(_wp(tmp_path, corpus, vocab_file)).tokens.tolist())


def _wp(tmp_path, corpus, vocab_file):
    preprocess(["--input", str(corpus), "--output-prefix", str(tmp_path / "wp"), *WP, "--vocab-file", vocab_file])
    return tmp_path / "wp_text_document"


def _bad_input(tmp_path):
    """One file with a sample of every bad-line class, and one truncated gzip."""
    lines = [json.dumps({"text": "good line one"}), "{not json", json.dumps({"url": "no text key"}),
             json.dumps({"text": None}), json.dumps({"text": "   "}), b'{"text": "caf\xe9 latin-1"}',
             json.dumps(["a", "list"]), json.dumps({"text": "\u0000\u0001"}), "", json.dumps({"text": "good two"})]
    write_jsonl(tmp_path / "a.json", lines)
    good = gzip.compress(b"".join(json.dumps({"text": f"doc {i} " * 50}).encode() + b"\n" for i in range(200)))
    (tmp_path / "b.json.gz").write_bytes(good[: len(good) // 2])
    return [str(tmp_path / "a.json"), str(tmp_path / "b.json.gz")]


def test_every_bad_input_class_is_counted_and_the_run_continues(tmp_path, vocab_file):
    files = _bad_input(tmp_path)
    summary = preprocess(["--input", *files, "--output-prefix", str(tmp_path / "o"), *WP, "--vocab-file",
                          vocab_file])
    assert summary["skipped"] == {"malformed_json": 2, "missing_key": 2, "empty_text": 2, "non_utf8": 1,
                                  "truncated_gzip": 1}
    ds = IndexedDataset(tmp_path / "o_text_document")
    tok = load_tokenizer("BertWordPieceLowerCase", vocab_file)
    assert ds.document(0).tolist() == tok.encode("good line one")
    assert ds.document(1).tolist() == tok.encode("good two")
    assert 2 < ds.num_documents < 200 + 2  # the complete lines before the gzip damage are kept


@pytest.mark.parametrize("line, reason", [("{not json", "malformed_json"), ('{"url": 1}', "missing_key"),
                                          ('{"text": ""}', "empty_text"), (b'{"text": "\xff"}', "non_utf8")])
def test_on_error_fail_stops_naming_file_line_and_reason(tmp_path, vocab_file, line, reason):
    src = write_jsonl(tmp_path / "in.json", [json.dumps({"text": "fine"}), line])
    with pytest.raises(InputError, match=rf"in\.json:2: {reason}"):
        preprocess(["--input", str(src), "--output-prefix", str(tmp_path / "o"), *WP, "--vocab-file", vocab_file,
                    "--on-error", "fail"])
    assert sorted(os.listdir(tmp_path)) == ["in.json"]  # no output, not even temporaries


def test_truncated_gzip_fails_under_on_error_fail(tmp_path, vocab_file):
    files = _bad_input(tmp_path)
    with pytest.raises(InputError, match="b.json.gz: truncated_gzip"):
        preprocess(["--input", files[1], "--output-prefix", str(tmp_path / "o"), *WP, "--vocab-file", vocab_file,
                    "--on-error", "fail"])
    assert not list(tmp_path.glob("o_*"))


def test_missing_input_and_tokenizer_files_are_clear_errors(tmp_path, vocab_file):
    with pytest.raises(InputError, match="matches no file"):
        preprocess(["--input", str(tmp_path / "*.json.gz"), "--output-prefix", str(tmp_path / "o"), *WP,
                    "--vocab-file", vocab_file])
    src = write_jsonl(tmp_path / "in.json", [json.dumps({"text": "x"})])
    with pytest.raises(ValueError, match="needs a vocab file"):
        preprocess(["--input", str(src), "--output-prefix", str(tmp_path / "o"), *WP])


def test_merge_concatenates_shards(tmp_path, sample_texts, vocab_file):
    import merge_datasets

    for i in range(3):
        src = write_jsonl(tmp_path / f"s{i}.json", _records(sample_texts[i * 10:(i + 1) * 10]))
        preprocess(["--input", str(src), "--output-prefix", str(tmp_path / "shards" / f"s{i}"), *WP, "--vocab-file",
                    vocab_file])
    assert merge_datasets.main(["--input", str(tmp_path / "shards"), "--output-prefix", str(tmp_path / "all")]) == 0
    merged, tok = IndexedDataset(tmp_path / "all"), load_tokenizer("BertWordPieceLowerCase", vocab_file)
    assert merged.num_documents == 30
    for j in (0, 9, 10, 29):
        assert merged.document(j).tolist() == tok.encode(sample_texts[j])


def test_sentence_splitter_keeps_abbreviations_and_numbers_together():
    from megabert.data.sentences import split_sentences

    text = 'Dr. Smith left at 3.30 p.m. yesterday. He said "Hello!" Then left.\nSee e.g. Fig. 3? Yes.'
    assert split_sentences(text) == ["Dr. Smith left at 3.30 p.m. yesterday.", 'He said "Hello!"', "Then left.",
                                     "See e.g. Fig. 3?", "Yes."]
