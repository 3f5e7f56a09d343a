"""Tokenizers behind Megatron's flags: WordPiece vocab.txt (cased/uncased), SentencePiece, Hugging Face JSON.

Every tokenizer exposes the same small surface the loader and the tools need: ``vocab_size``, the special ids
(``pad_id``, ``cls_id``, ``sep_id``, ``mask_id``, ``unk_id``, ``special_ids``), ``encode``/``encode_batch``
(no special tokens added: samples are framed by the loader), ``decode``, and ``word_continuation``, a boolean
array over the vocabulary that marks tokens continuing a word (for whole-word masking).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

TOKENIZER_TYPES = ("BertWordPieceLowerCase", "BertWordPieceCase", "SentencePieceTokenizer", "HuggingFaceTokenizer")

# Names a special token goes by in common vocabularies, in order of preference.
_SPECIAL_NAMES = {
    "pad": ("[PAD]", "<pad>", "<PAD>"),
    "unk": ("[UNK]", "<unk>", "<UNK>"),
    "cls": ("[CLS]", "<cls>", "<CLS>", "<s>"),
    "sep": ("[SEP]", "<sep>", "<SEP>", "</s>"),
    "mask": ("[MASK]", "<mask>", "<MASK>"),
}


class TokenizerError(ValueError):
    """The tokenizer files are missing or lack a token the MLM pipeline needs."""


class Tokenizer:
    """Base: subclasses set ``_vocab`` (list of token strings, index = id) and implement encode/decode."""

    _vocab: list[str]

    def _finish_init(self, continuation_prefix: Optional[str], word_start_marker: Optional[str]) -> None:
        index = {tok: i for i, tok in enumerate(self._vocab)}
        for role, names in _SPECIAL_NAMES.items():
            found = next((index[n] for n in names if n in index), None)
            if found is None:
                raise TokenizerError(f"{self.name}: vocabulary has no {role} token (looked for {', '.join(names)})")
            setattr(self, f"{role}_id", found)
        self.special_ids = {self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id}
        # Other bracketed upper-case tokens ([EOD], [BOS], ...) and the usual <s>-style names are special too.
        known = {n for names in _SPECIAL_NAMES.values() for n in names}
        self.special_ids |= {i for i, t in enumerate(self._vocab)
                             if t in known or (len(t) > 2 and t[0] == "[" and t[-1] == "]" and t[1:-1].isupper())}
        self.special_ids.discard(self.unk_id)
        cont = np.zeros(len(self._vocab), dtype=bool)
        if continuation_prefix:
            cont = np.array([t.startswith(continuation_prefix) for t in self._vocab], dtype=bool)
        elif word_start_marker:
            cont = np.array([not t.startswith(word_start_marker) for t in self._vocab], dtype=bool)
        cont[list(self.special_ids)] = False
        self.word_continuation = cont
        self.eod_id = self.sep_id  # BERT has no end-of-document token; Megatron's BERT tokenizers use [SEP]

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def id_to_token(self, i: int) -> str:
        return self._vocab[i]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError


class HFTokenizer(Tokenizer):
    """Any Hugging Face `tokenizers` model: WordPiece from vocab.txt, or a tokenizer.json."""

    def __init__(self, backend, name: str):
        from tokenizers import models

        self.name = name
        self._tok = backend
        vocab = backend.get_vocab(with_added_tokens=True)
        self._vocab = [""] * (max(vocab.values()) + 1)
        for tok, i in vocab.items():
            self._vocab[i] = tok
        model = backend.model
        prefix = getattr(model, "continuing_subword_prefix", None) if isinstance(model, models.WordPiece) else None
        if prefix is None and isinstance(model, (models.BPE,)):
            prefix = getattr(model, "continuing_subword_prefix", None) or None
        marker = None
        if not prefix:
            # Byte-level BPE marks word starts with 'Ġ', Unigram/Metaspace with '▁'.
            marker = "Ġ" if any(t.startswith("Ġ") for t in self._vocab[:2000]) else "▁"
        self._finish_init(prefix, marker)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def set_threads(self, n: int) -> None:
        """Rust-side parallelism of encode_batch is global (TOKENIZERS_PARALLELISM); nothing per instance."""


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model. Special tokens missing from it are appended after its vocabulary (as Megatron)."""

    def __init__(self, model_file: str):
        import sentencepiece as spm

        self.name = f"SentencePieceTokenizer({model_file})"
        self._sp = spm.SentencePieceProcessor(model_file=model_file)
        n = self._sp.get_piece_size()
        self._vocab = [self._sp.id_to_piece(i) for i in range(n)]
        if self._sp.pad_id() >= 0:
            self._vocab[self._sp.pad_id()] = "[PAD]" if "[PAD]" not in self._vocab else self._vocab[self._sp.pad_id()]
        if self._sp.unk_id() >= 0 and "[UNK]" not in self._vocab and "<unk>" not in self._vocab:
            self._vocab[self._sp.unk_id()] = "[UNK]"
        self._extra: dict[int, str] = {}
        for names in _SPECIAL_NAMES.values():
            if not any(name in self._vocab for name in names):
                self._extra[len(self._vocab)] = names[0]
                self._vocab.append(names[0])
        self._sp_size = n
        self._finish_init(None, "▁")

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        pieces, out = [], []
        for i in ids:
            i = int(i)
            if i >= self._sp_size:
                if pieces:
                    out.append(self._sp.decode(pieces))
                    pieces = []
                out.append(self._vocab[i])
            else:
                pieces.append(i)
        if pieces:
            out.append(self._sp.decode(pieces))
        return " ".join(out)


def _wordpiece(vocab_file: str, lowercase: bool):
    from tokenizers import Tokenizer as HFBackend, decoders, models, normalizers, pre_tokenizers

    backend = HFBackend(models.WordPiece.from_file(vocab_file, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def load_tokenizer(tokenizer_type: str, vocab_file: Optional[str] = None,
                   tokenizer_model: Optional[str] = None) -> Tokenizer:
    """Builds a tokenizer from Megatron-style arguments; errors name the missing flag or file."""
    if tokenizer_type not in TOKENIZER_TYPES:
        raise TokenizerError(f"unknown tokenizer type {tokenizer_type!r}; expected one of {', '.join(TOKENIZER_TYPES)}")
    if tokenizer_type.startswith("BertWordPiece"):
        if not vocab_file:
            raise TokenizerError(f"{tokenizer_type} needs a vocab file (--vocab-file / data.vocab_file)")
        _require_file(vocab_file, "vocab file")
        lower = tokenizer_type == "BertWordPieceLowerCase"
        return HFTokenizer(_wordpiece(vocab_file, lower), f"{tokenizer_type}({vocab_file})")
    if not tokenizer_model:
        raise TokenizerError(f"{tokenizer_type} needs a tokenizer model (--tokenizer-model / data.tokenizer_model)")
    if tokenizer_type == "SentencePieceTokenizer":
        _require_file(tokenizer_model, "SentencePiece model")
        return SentencePieceTokenizer(tokenizer_model)
    from tokenizers import Tokenizer as HFBackend

    path = os.path.join(tokenizer_model, "tokenizer.json") if os.path.isdir(tokenizer_model) else tokenizer_model
    _require_file(path, "tokenizer.json")
    return HFTokenizer(HFBackend.from_file(path), f"HuggingFaceTokenizer({path})")


def build_tokenizer(data_cfg) -> Tokenizer:
    """The tokenizer a DataConfig names (tokenizer_type, vocab_file, tokenizer_model)."""
    return load_tokenizer(data_cfg.tokenizer_type, data_cfg.vocab_file, data_cfg.tokenizer_model)


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise TokenizerError(f"{what} {path!r} does not exist")
