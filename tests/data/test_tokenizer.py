"""Tokenizers behind Megatron's flags, and tools/train_tokenizer.py."""

from __future__ import annotations

import pytest

from megabert.data import load_tokenizer
from megabert.data.tokenizer import TokenizerError

from .conftest import write_jsonl


def test_sample_vocab_has_bert_special_tokens_and_a_multiple_of_64(vocab_file):
    tok = load_tokenizer("BertWordPieceLowerCase", vocab_file)
    assert tok.vocab_size == 8192
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert {0, 2, 3, 4} <= tok.special_ids and tok.unk_id not in tok.special_ids
    ids = tok.encode("PostgreSQL stores Tables.")
    assert tok.decode(ids) == "postgresql stores tables."
    assert tok.word_continuation[[i for i in range(tok.vocab_size) if tok.id_to_token(i).startswith("##")]].all()


def test_cased_wordpiece_keeps_case(vocab_file):
    lower = load_tokenizer("BertWordPieceLowerCase", vocab_file).encode("Debian")
    cased = load_tokenizer("BertWordPieceCase", vocab_file).encode("Debian")
    assert lower != cased


def test_train_wordpiece_pads_vocab_to_multiple_of_64(tmp_path, sample_texts):
    from megabert.cli import train_tokenizer

    src = write_jsonl(tmp_path / "c.json.gz", [{"text": t} for t in sample_texts[:200]])
    train_tokenizer.main(["--input", str(src), "--vocab-size", "1000", "--output-dir", str(tmp_path)])
    lines = (tmp_path / "vocab.txt").read_text().splitlines()
    assert len(lines) == 1024 and lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = load_tokenizer("BertWordPieceLowerCase", str(tmp_path / "vocab.txt"))
    assert tok.vocab_size == 1024 and tok.encode(sample_texts[0])


def test_missing_files_and_flags_are_named(tmp_path):
    with pytest.raises(TokenizerError, match="needs a vocab file"):
        load_tokenizer("BertWordPieceLowerCase")
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer("BertWordPieceLowerCase", str(tmp_path / "nope.txt"))
    with pytest.raises(TokenizerError, match="needs a tokenizer model"):
        load_tokenizer("SentencePieceTokenizer")
    with pytest.raises(TokenizerError, match="unknown tokenizer type"):
        load_tokenizer("GPT2BPETokenizer")
    (tmp_path / "v.txt").write_text("a\nb\n[UNK]\n")
    with pytest.raises(TokenizerError, match="no pad token"):
        load_tokenizer("BertWordPieceLowerCase", str(tmp_path / "v.txt"))


def test_byte_level_bpe_tokenizer_json_maps_roberta_specials_and_word_starts(tmp_path, sample_texts):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sample_texts[:200], vocab_size=600, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path))  # a directory works too
    assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    ids = tok.encode("databases store tables")
    pieces = [tok.id_to_token(i) for i in ids]
    assert [not p.startswith("Ġ") for p in pieces[1:]] == tok.word_continuation[ids[1:]].tolist()
    assert tok.decode(ids) == "databases store tables"
