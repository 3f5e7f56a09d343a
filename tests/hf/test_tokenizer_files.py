"""AutoTokenizer.from_pretrained(export) encodes as megabert's tokenizer does (the one pretraining used, framed
[CLS] a [SEP] (b [SEP])): WordPiece, SentencePiece (unigram and BPE) and tokenizer.json models."""

import glob
import json

import pytest

from megabert.hf.export import export_model_dir
from megabert.model.pretrained import attach_tokenizer
from megabert.tasks.tokenizer import load_tokenizer
from tests.hf.helpers import model_dir
from tests.tasks.tiny_model import GLUE_SAMPLE, load_tool

SENTENCES = [
    "The film was brilliant, and the soundtrack wasn't terrible.",
    "Café déjà vu: a naïve façade in Zürich!",
    "北京欢迎你 and 東京",
    "multiple   spaces\tand a tab, trailing space ",
    "symbols © ® ™ and an emoji 🙂 (unknown to a small vocabulary)",
    "UPPER case Mixed CaSe 12,345.67",
]
PAIRS = [("A man is playing a guitar.", "Someone plays music."), ("short", "a much longer second segment here")]


def glue_texts(limit: int = 4000) -> list[str]:
    texts = []
    for path in sorted(glob.glob(str(GLUE_SAMPLE / "*" / "*.tsv"))):
        with open(path, encoding="utf-8") as f:
            next(f)
            texts += [cell for line in f for cell in line.rstrip("\n").split("\t") if len(cell) > 20]
    return texts[:limit]


def assert_same_ids(model_dir_path, export_dir):
    from transformers import AutoTokenizer

    ours = load_tokenizer(model_dir_path, seq_len=512)
    theirs = AutoTokenizer.from_pretrained(export_dir, trust_remote_code=True)
    for text in SENTENCES + glue_texts(200):
        ids, types = ours.encode([text], None)
        got = theirs(text)
        assert got["input_ids"] == ids[0], text
        assert got["token_type_ids"] == types[0], text
    for a, b in PAIRS:
        ids, types = ours.encode([a], [b])
        got = theirs(a, b)
        assert (got["input_ids"], got["token_type_ids"]) == (ids[0], types[0]), (a, b)
    batch = theirs(SENTENCES[:3], padding=True)
    assert all(row[0] == ours.tokenizer.cls_id for row in batch["input_ids"])
    assert theirs.pad_token_id == ours.tokenizer.pad_id and theirs.mask_token_id == ours.tokenizer.mask_id


@pytest.mark.parametrize("kind", ["BertWordPieceLowerCase", "BertWordPieceCase"])
def test_wordpiece_export_encodes_as_megabert(tmp_path, vocab_file, kind):
    src, _ = model_dir(tmp_path / "mb", vocab_file)
    attach_tokenizer(src, kind, vocab_file=str(vocab_file))
    out = export_model_dir(src, tmp_path / "hf").directory
    assert (out / "vocab.txt").read_text() == vocab_file.read_text()
    assert_same_ids(src, out)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_export_encodes_as_megabert(tmp_path, vocab_file, model_type):
    train_tokenizer = load_tool("train_tokenizer")
    spm = train_tokenizer.train_sentencepiece(iter(glue_texts()), 512, tmp_path, model_type)
    src, _ = model_dir(tmp_path / "mb", vocab_file)  # the model dir's WordPiece vocab is replaced
    attach_tokenizer(src, "SentencePieceTokenizer", tokenizer_model=str(spm))
    config = json.loads((src / "config.json").read_text())
    tokens = load_tokenizer(src, seq_len=512).tokenizer.vocab_size
    vocab_size = max(config["model"]["vocab_size"], -(-tokens // 64) * 64)
    config["model"]["vocab_size"] = vocab_size
    (src / "config.json").write_text(json.dumps(config))
    _resize_embeddings(src, vocab_size)
    out = export_model_dir(src, tmp_path / "hf").directory
    assert_same_ids(src, out)
    assert json.loads((out / "config.json").read_text())["megabert"]["tokenizer"]["tokenizer_type"] == \
        "SentencePieceTokenizer"


def test_tokenizer_json_export_encodes_as_megabert(tmp_path, vocab_file):
    """A tokenizer.json without megabert's framing gets it as its post-processor."""
    from megabert.data.tokenizer import _wordpiece

    _wordpiece(str(vocab_file), lowercase=True).save(str(tmp_path / "tokenizer.json"))  # no post-processor
    src, _ = model_dir(tmp_path / "mb", vocab_file)
    attach_tokenizer(src, "HuggingFaceTokenizer", tokenizer_model=str(tmp_path / "tokenizer.json"))
    out = export_model_dir(src, tmp_path / "hf").directory
    assert_same_ids(src, out)


def _resize_embeddings(directory, vocab_size):
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(directory / "model.safetensors"))
    for key in ("bert.embeddings.word_embeddings.weight", "head.decoder_bias"):
        tensor = state[key]
        grown = torch.zeros(vocab_size, *tensor.shape[1:])
        grown[: tensor.shape[0]] = tensor
        state[key] = grown
    save_file(state, str(directory / "model.safetensors"))
