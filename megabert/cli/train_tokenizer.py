#!/usr/bin/env python
"""Train a WordPiece (BERT) or SentencePiece tokenizer on C4-style JSON lines; vocabulary padded to a multiple of 64.

    python tools/train_tokenizer.py --input 'data/sample/c4-train.*.json.gz' --type wordpiece \\
        --vocab-size 8192 --lowercase --output-dir data/sample

WordPiece writes vocab.txt ([PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4; use --tokenizer-type
BertWordPieceLowerCase/BertWordPieceCase --vocab-file vocab.txt). SentencePiece writes spm.model/spm.vocab with
the same special tokens ([PAD]=0, [UNK]=1; use --tokenizer-type SentencePieceTokenizer --tokenizer-model
spm.model). A trainer that stops short of the requested size (small corpus) is padded with [unusedN] tokens.
WordPiece training is not reproducible (the tokenizers library breaks ties by hash-map order): keep the
vocabulary that made a dataset, since a second training on the same corpus gives other token ids.

Bad lines are skipped and counted per reason as in preprocess_data.py (malformed JSON, missing key, empty text,
non-UTF-8, truncated gzip, a line over --max-line-bytes or a text over --max-document-chars); an input with no
usable text is an error, not a vocabulary of special tokens only.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterator


from megabert.data.jsonl import (
    MAX_DOCUMENT_CHARS, MAX_LINE_BYTES, SKIP_REASONS, InputError, expand_inputs, parse_record, read_lines)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def iter_texts(files: list[str], key: str, max_docs: int | None, skipped: Counter,
               max_line_bytes: int = MAX_LINE_BYTES, max_document_chars: int = MAX_DOCUMENT_CHARS) -> Iterator[str]:
    """Texts of the usable lines; ``skipped`` counts the others per reason (preprocess_data.py's reasons)."""
    seen = 0
    for path in files:
        for lines, _, error in read_lines(path, max_line_bytes=max_line_bytes):
            for line in lines:
                reason, _, fields = parse_record(line, [key], max_document_chars)
                if reason:
                    if reason != "blank":
                        skipped[reason] += 1
                    continue
                yield fields[0]
                seen += 1
                if max_docs and seen >= max_docs:
                    return
            if error:
                skipped[error] += 1


def pad_to_multiple(size: int, multiple: int = 64) -> int:
    return -(-size // multiple) * multiple


def train_wordpiece(texts: Iterator[str], vocab_size: int, lowercase: bool, out_dir: Path) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                                        continuing_subword_prefix="##", show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    assert tokens[:len(SPECIALS)] == SPECIALS, tokens[:8]
    tokens = tokens[:vocab_size]
    target = pad_to_multiple(vocab_size)
    tokens += [f"[unused{i}]" for i in range(target - len(tokens))]
    path = out_dir / "vocab.txt"
    _atomic_write(path, "".join(t + "\n" for t in tokens))
    return path


def train_sentencepiece(texts: Iterator[str], vocab_size: int, out_dir: Path, model_type: str) -> Path:
    import sentencepiece as spm

    target = pad_to_multiple(vocab_size)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        for text in texts:
            f.write(text.replace("\n", " ") + "\n")
        corpus = f.name
    try:
        prefix = str(out_dir / "spm")
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=prefix + ".tmp", vocab_size=target, model_type=model_type,
            pad_id=0, pad_piece="[PAD]", unk_id=1, unk_piece="[UNK]", bos_id=-1, eos_id=-1,
            user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], character_coverage=0.9999,
            hard_vocab_limit=False, minloglevel=2)
        for ext in ("model", "vocab"):
            os.replace(f"{prefix}.tmp.{ext}", f"{prefix}.{ext}")
    finally:
        os.remove(corpus)
    return Path(prefix + ".model")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="JSON-lines files or globs (plain or .gz)")
    p.add_argument("--json-key", default="text", help="field holding the text (default: text)")
    p.add_argument("--type", choices=["wordpiece", "sentencepiece"], default="wordpiece")
    p.add_argument("--vocab-size", type=int, default=30522,
                   help="target size before padding to a multiple of 64 (BERT: 30522 -> 30528)")
    case = p.add_mutually_exclusive_group()
    case.add_argument("--lowercase", dest="lowercase", action="store_true", default=True,
                      help="uncased WordPiece (default; use with BertWordPieceLowerCase)")
    case.add_argument("--cased", dest="lowercase", action="store_false", help="cased WordPiece (BertWordPieceCase)")
    p.add_argument("--spm-model-type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--max-docs", type=int, default=None, help="train on at most this many documents")
    p.add_argument("--max-line-bytes", type=int, default=MAX_LINE_BYTES,
                   help="skip a line longer than this (as preprocess_data.py)")
    p.add_argument("--max-document-chars", type=int, default=MAX_DOCUMENT_CHARS,
                   help="skip a text longer than this (as preprocess_data.py)")
    p.add_argument("--output-dir", required=True)
    args = p.parse_args(argv)
    if args.vocab_size < 64:
        p.error("--vocab-size must be >= 64")
    if args.max_line_bytes < 1 or args.max_document_chars < 1:
        p.error("--max-line-bytes and --max-document-chars must be >= 1")
    out = Path(args.output_dir)
    skipped: Counter = Counter()
    try:
        files = expand_inputs(args.input)
        texts = iter_texts(files, args.json_key, args.max_docs, skipped, args.max_line_bytes,
                           args.max_document_chars)
        first = next(texts, None)
        if first is None:
            raise InputError(f"no usable text under key {args.json_key!r} in {len(files)} input file(s); skipped: "
                             f"{dict(skipped) or 'none'}")
    except InputError as err:
        print(f"train_tokenizer.py: error: {err}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    texts = itertools.chain([first], texts)
    if args.type == "wordpiece":
        path = train_wordpiece(texts, args.vocab_size, args.lowercase, out)
    else:
        path = train_sentencepiece(texts, args.vocab_size, out, args.spm_model_type)
    print("skipped: " + ", ".join(f"{r} {skipped.get(r, 0)}" for r in SKIP_REASONS))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
