"""Every class of bad input to preprocessing, the loader, the preflight data check and the data tools, in one table:
each row is counted and skipped (preprocessing) or stopped with an error that names the problem and the fix."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from megabert.config import ConfigError, DataConfig
from megabert.data import build_mlm_data, check_training_data
from megabert.data.indexed_dataset import (HEADER_BYTES, IndexedDataset, IndexedDatasetError, IndexedDatasetWriter,
                                           write_index)
from megabert.data.jsonl import SKIP_REASONS, InputError
from megabert.data.tokenizer import TokenizerError

from .conftest import preprocess, write_jsonl

WP = ["--tokenizer-type", "BertWordPieceLowerCase"]
SAMPLE_VOCAB = 8192  # data/sample/vocab.txt
N_DOCS = 40  # documents (one sequence each) of the small dataset every index row damages
GOOD = json.dumps({"text": "a good line of text"})


@dataclass
class Bad:
    """One row: what `tool` gets (`make(tmp_path)` builds it) and what must come out.

    skip: the reason and count a preprocessing run must report; `error` is then the message of the same input
    under --on-error fail (for train_tokenizer: the skip counts it prints). Otherwise `error` is a regular
    expression the error must match."""

    name: str
    tool: str  # preprocess | preprocess_run | open | load | check | merge | train_tokenizer
    make: Callable[[Path], dict]
    skip: tuple[str, int] | None = None
    error: str = ""
    raises: type = ValueError  # the exception class (preprocess_run, load); the others' are fixed by the tool


# ---------------------------------------------------------------------------------------------- builders


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _lines(*bad, gz: bool = False, flags=()) -> Callable[[Path], dict]:
    """A JSON-lines file: a good line, the bad line(s), a good line."""
    def make(tmp: Path) -> dict:
        path = write_jsonl(_mkdir(tmp / "in") / ("in.json.gz" if gz else "in.json"), [GOOD, *bad, GOOD])
        return {"input": path, "flags": list(flags), "good": 2}
    return make


def _lines_only(*lines, vocab=None) -> Callable[[Path], dict]:
    """A JSON-lines file of just these lines; ``vocab(tmp)`` replaces the vocab file when given."""
    def make(tmp: Path) -> dict:
        made = {"input": write_jsonl(_mkdir(tmp / "in") / "x.json", list(lines))}
        return made if vocab is None else {**made, "vocab": vocab(tmp)}
    return make


def _truncated_gzip(tmp: Path) -> dict:
    data = gzip.compress(b"".join(json.dumps({"text": f"doc {i} " * 50}).encode() + b"\n" for i in range(200)))
    path = _mkdir(tmp / "in") / "b.json.gz"
    path.write_bytes(data[: len(data) // 2])
    return {"input": path, "flags": [], "good": None}  # the lines before the damage: some, not all


def _dataset(tmp: Path, name: str = "ds", dtype=np.uint16, docs: int = N_DOCS, vocab: int = SAMPLE_VOCAB,
             lengths=None) -> str:
    """A small dataset of random token ids below the sample vocabulary, one sequence per document."""
    rng = np.random.default_rng(len(name))
    prefix = str(tmp / "data" / name)
    with IndexedDatasetWriter(prefix, dtype) as w:
        for j in range(docs):
            n = int(rng.integers(5, 40)) if lengths is None else lengths[j]
            w.add_document(rng.integers(5, vocab, size=n))
        w.finalize()
    return prefix


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _xor(path: str, offset: int, mask: int) -> None:
    with open(path, "rb") as f:
        f.seek(offset)
        byte = f.read(1)[0]
    _patch(path, offset, bytes([byte ^ mask]))


LENGTHS_AT = HEADER_BYTES  # int32[S]
POINTERS_AT = HEADER_BYTES + 4 * N_DOCS  # int64[S]
DOCS_AT = POINTERS_AT + 8 * N_DOCS  # int64[S + 1]


def _damaged(damage: Callable[[str], None], **kw) -> Callable[[Path], dict]:
    def make(tmp: Path) -> dict:
        prefix = _dataset(tmp, **kw)
        damage(prefix)
        return {"prefix": prefix}
    return make


def _idx(prefix: str) -> str:
    return prefix + ".idx"


def _bin(prefix: str) -> str:
    return prefix + ".bin"


def _truncate(path: str, by: int) -> None:
    os.truncate(path, os.path.getsize(path) - by)


def _append(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _as_int32_bin(prefix: str) -> None:
    tokens = np.fromfile(_bin(prefix), dtype=np.uint16)
    tokens.astype(np.int32).tofile(_bin(prefix))


def _loader_cfg(tmp: Path, prefixes, model_vocab_size=None, **kw) -> dict:
    cfg = DataConfig(data_path=list(prefixes), vocab_file=kw.pop("vocab_file", None), cache_dir=str(tmp / "cache"),
                     num_workers=0, seq_len=kw.pop("seq_len", 32), **kw)
    return {"cfg": cfg, "model_vocab_size": model_vocab_size}


def _data(damage=None, *, prefixes=None, **cfg_kw) -> Callable[[Path], dict]:
    """A DataConfig over the small dataset (damaged by `damage`), or over `prefixes(tmp)`."""
    def make(tmp: Path) -> dict:
        if prefixes is not None:
            paths = prefixes(tmp)
        else:
            paths = [_dataset(tmp)]
            if damage:
                damage(paths[0])
        return _loader_cfg(tmp, paths, **cfg_kw)
    return make


def _tail_beyond_vocab(tmp: Path) -> list[str]:
    """2.5 M good tokens, then ids of a bigger vocabulary where a head-only probe would not look."""
    prefix = str(tmp / "data" / "tail")
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        w.add_document(np.full(2_500_000, 7, dtype=np.uint16))
        w.add_document(np.full(200_000, 30000, dtype=np.uint16))
        w.finalize()
    return [prefix]


def _float_dataset(tmp: Path) -> list[str]:
    """A valid MMIDIDX pair of float32 values (megatron-core can write one; it is not token data)."""
    prefix = str(_mkdir(tmp / "data") / "float")
    np.arange(5, 50, dtype=np.float32).tofile(_bin(prefix))
    write_index(_idx(prefix), np.dtype(np.float32), np.array([45], np.int32), [0, 1])
    return [prefix]


def _small_vocab(tmp: Path) -> str:
    path = tmp / "small_vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"t{i}" for i in range(59)]))
    return str(path)


def _merge(items: Callable[[Path], list[str]], output: Callable[[Path], str] = lambda t: str(t / "merged")):
    def make(tmp: Path) -> dict:
        return {"argv": ["--input", *items(tmp), "--output-prefix", output(tmp)]}
    return make


def _damaged_bin_removed(tmp: Path) -> str:
    prefix = _dataset(tmp, "b")
    os.remove(_bin(prefix))
    return prefix


def _tokenizer_corpus(*lines) -> Callable[[Path], dict]:
    def make(tmp: Path) -> dict:
        path = write_jsonl(_mkdir(tmp / "in") / "corpus.json", list(lines))
        return {"argv": ["--input", str(path), "--vocab-size", "100", "--output-dir", str(tmp / "tok")]}
    return make


# ---------------------------------------------------------------------------------------------- the table

LONG_LINE = json.dumps({"text": "x" * 100, "meta": "m" * 5000})  # 5 KB line, short text
LONG_TEXT = json.dumps({"text": "word " * 600})  # 3,000 characters

TABLE = [
    # preprocessing: counted and skipped; with --on-error fail, stopped at file:line
    Bad("malformed json", "preprocess", _lines("{not json"), skip=("malformed_json", 1),
        error=r"in\.json:2: malformed_json"),
    Bad("json that is not an object", "preprocess", _lines(json.dumps(["a", "list"])), skip=("malformed_json", 1),
        error=r"in\.json:2: malformed_json: a JSON list"),
    Bad("missing key", "preprocess", _lines(json.dumps({"url": 1})), skip=("missing_key", 1),
        error=r"in\.json:2: missing_key: key 'text' is missing"),
    Bad("text not a string", "preprocess", _lines(json.dumps({"text": None})), skip=("missing_key", 1),
        error=r"in\.json:2: missing_key: key 'text' is a NoneType"),
    Bad("empty text", "preprocess", _lines(json.dumps({"text": ""})), skip=("empty_text", 1),
        error=r"in\.json:2: empty_text"),
    Bad("text with no tokens", "preprocess", _lines(json.dumps({"text": "\u0000\u0001"})), skip=("empty_text", 1),
        error=r"in\.json \(lines from 1\): empty_text"),
    Bad("non-UTF-8 text", "preprocess", _lines(b'{"text": "caf\xe9 latin-1"}'), skip=("non_utf8", 1),
        error=r"in\.json:2: non_utf8"),
    Bad("bad line in a gzip file", "preprocess", _lines(b'{"text": "\xff"}', gz=True), skip=("non_utf8", 1),
        error=r"in\.json\.gz:2: non_utf8"),
    Bad("truncated gzip", "preprocess", _truncated_gzip, skip=("truncated_gzip", 1),
        error=r"b\.json\.gz: truncated_gzip: the gzip stream ends or breaks after line \d+"),
    Bad("oversize line", "preprocess", _lines(LONG_LINE, flags=["--max-line-bytes", "4096"]),
        skip=("oversize_line", 1), error=r"in\.json:2: oversize_line: the line holds 5,\d{3} bytes, over the cap of "
                                         r"4,096 \(--max-line-bytes\)"),
    Bad("oversize line in a gzip file", "preprocess",
        _lines(LONG_LINE, LONG_LINE, gz=True, flags=["--max-line-bytes", "4096"]), skip=("oversize_line", 2),
        error=r"in\.json\.gz:2: oversize_line"),
    Bad("oversize document", "preprocess", _lines(LONG_TEXT, flags=["--max-document-chars", "2000"]),
        skip=("oversize_document", 1),
        error=r"in\.json:2: oversize_document: key 'text' holds 3,000 characters, over the cap of 2,000"),
    # preprocessing: errors that stop the run
    Bad("no usable document", "preprocess_run", _lines_only("{", "[]"),
        error=r"no usable documents in 1 input file\(s\); skipped: \{'malformed_json': 2\}; the first: \S*x\.json:1: "
              r"malformed_json: ", raises=InputError),
    Bad("a JSON array instead of JSON lines", "preprocess_run", _lines_only('[{"text": "a b"},', '{"text": "c d"}]'),
        error=r"the first: \S*x\.json:1: malformed_json: .*the input must be JSON lines, one object per line: a JSON "
              r"array is not read", raises=InputError),
    Bad("input matches no file", "preprocess_run", lambda t: {"input": t / "in" / "*.json.gz"},
        error="matches no file", raises=InputError),
    Bad("tokenizer without its vocab file", "preprocess_run", _lines_only(GOOD, vocab=lambda t: None),
        error="needs a vocab file", raises=TokenizerError),
    Bad("vocab file that does not exist", "preprocess_run", _lines_only(GOOD, vocab=lambda t: str(t / "nope.txt")),
        error="does not exist", raises=TokenizerError),
    # opening a dataset: the file, the record, what is wrong, and the fix
    Bad("missing .bin/.idx", "open", lambda t: {"prefix": str(t / "data" / "nope")},
        error=r"nope\.idx' does not exist"),
    Bad("truncated .idx", "open", _damaged(lambda p: _truncate(_idx(p), 9)), error=r"\.idx': truncated"),
    Bad("corrupt .idx header: magic", "open", _damaged(lambda p: _patch(_idx(p), 0, b"NOTMAGIC!")), error="bad magic"),
    Bad("corrupt .idx header: version", "open", _damaged(lambda p: _patch(_idx(p), 9, struct.pack("<Q", 2))),
        error="index version 2"),
    Bad("corrupt .idx header: dtype code", "open", _damaged(lambda p: _patch(_idx(p), 17, b"\x09")),
        error="unknown dtype code 9"),
    Bad("corrupt .idx header: sequence count", "open",
        _damaged(lambda p: _patch(_idx(p), 18, struct.pack("<Q", N_DOCS - 1))), error="header's counts are wrong"),
    Bad("short .bin", "open", _damaged(lambda p: _truncate(_bin(p), 2)), error=r"\.bin': truncated"),
    Bad("long .bin", "open", _damaged(lambda p: _append(_bin(p), b"\0\0")), error=r"\.bin': .* more than the"),
    Bad("flipped pointer bytes (high)", "open", _damaged(lambda p: _xor(_idx(p), POINTERS_AT + 8 * 7 + 5, 0xFF)),
        error=r"sequence 7 of 40 has pointer \d+, but the sequences before it end at byte \d+ \(a corrupt pointer\)"),
    Bad("flipped pointer bytes (overlap)", "open", _damaged(lambda p: _xor(_idx(p), POINTERS_AT + 8 * 7, 0x08)),
        error=r"sequence 7 of 40 has pointer .*corrupt pointer"),
    Bad("flipped length bytes", "open", _damaged(lambda p: _xor(_idx(p), LENGTHS_AT + 4 * 7, 0x03)),
        error=r"sequence 7 of 40 has length \d+, but the pointers around it give \d+ \(a corrupt length\)"),
    Bad("flipped length sign", "open", _damaged(lambda p: _xor(_idx(p), LENGTHS_AT + 4 * 7 + 3, 0xFF)),
        error=r"sequence 7 of 40 has length -\d+ \(negative"),
    Bad("flipped length bytes of the last sequence", "open",
        _damaged(lambda p: _xor(_idx(p), LENGTHS_AT + 4 * (N_DOCS - 1), 0x40)),
        error=r"\.bin': .*the lengths may be corrupt \(the last, sequence 39"),
    Bad("bad document index: first entry", "open", _damaged(lambda p: _patch(_idx(p), DOCS_AT, struct.pack("<q", 1))),
        error="document index 0 is 1, not 0"),
    Bad("bad document index: out of range", "open",
        _damaged(lambda p: _patch(_idx(p), DOCS_AT + 8 * 5, struct.pack("<q", 10**6))),
        error=r"document index entry 5 of 41 is 1000000, outside \[0, 40\]"),
    Bad("bad document index: decreasing", "open",
        _damaged(lambda p: _patch(_idx(p), DOCS_AT + 8 * 5, struct.pack("<q", 2))),
        error="document index entry 5 of 41 is 2, below entry 4"),
    Bad("bad document index: last entry", "open",
        _damaged(lambda p: _patch(_idx(p), DOCS_AT + 8 * N_DOCS, struct.pack("<q", N_DOCS - 1))),
        error=r"last document index \(entry 40\) is 39, not the sequence count 40"),
    Bad("mismatched dtype: header code", "open", _damaged(lambda p: _patch(_idx(p), 17, b"\x04")),
        error=r"pointers are those of 2-byte tokens .* header's dtype is int32"),
    Bad("mismatched dtype: .bin of another dtype", "open", _damaged(_as_int32_bin),
        error=r"its size fits \d+ tokens of int32: the header's dtype \(uint16\) is wrong"),
    # the loader
    Bad("loader: missing dataset", "load", lambda t: _loader_cfg(t, [str(t / "missing_text_document")]),
        error="does not exist", raises=IndexedDatasetError),
    Bad("loader: malformed weighted data_path", "load",
        _data(prefixes=lambda t: ["0.5", _dataset(t), "0.5"]), error="weighted form"),
    Bad("loader: wrong vocab", "load", lambda t: _loader_cfg(t, [_dataset(t)], vocab_file=_small_vocab(t)),
        error=r"holds token id \d+ >= the tokenizer's vocabulary \(64\); was it preprocessed with another tokenizer"),
    Bad("loader: wrong vocab past the first megabyte", "load", _data(prefixes=_tail_beyond_vocab),
        error=r"holds token id 30000 >= the tokenizer's vocabulary \(8192\)"),
    Bad("loader: float dataset", "load", _data(prefixes=_float_dataset), error="stores float32 values, not token ids"),
    Bad("loader: flipped pointer bytes", "load", _data(lambda p: _xor(_idx(p), POINTERS_AT + 8 * 7 + 5, 0xFF)),
        error=r"ds\.idx': sequence 7 of 40 has pointer .*corrupt pointer"),
    Bad("loader: flipped length bytes", "load", _data(lambda p: _xor(_idx(p), LENGTHS_AT + 4 * 7, 0x03)),
        error=r"ds\.idx': sequence 7 of 40 has length .*corrupt length"),
    # the preflight check of the data against the config
    Bad("check: missing .idx", "check", _data(lambda p: os.remove(_idx(p))),
        error=r"data\.data_path: .*ds\.idx not found; .*preprocess the corpus first"),
    Bad("check: corrupt index", "check", _data(lambda p: _xor(_idx(p), LENGTHS_AT + 4 * 7, 0x03)),
        error=r"data\.data_path: .*ds\.idx': sequence 7 of 40 has length .*corrupt length"),
    Bad("check: wrong vocab", "check", lambda t: _loader_cfg(t, [_dataset(t)], vocab_file=_small_vocab(t)),
        error=r"data\.data_path: .* holds token id \d+ >= the tokenizer's vocabulary \(64\)"),
    Bad("check: model vocabulary smaller than the tokenizer's", "check", _data(model_vocab_size=4096),
        error=r"model\.vocab_size \(4096\) is smaller than the tokenizer's vocabulary \(8192\); set it to 8192"),
    Bad("check: no validation share", "check", _data(split="1,0,0"),
        error=r"data\.split \('1,0,0'\) leaves no validation samples .* logging\.eval_interval 0"),
    Bad("check: no training share", "check", _data(split="0,1,0"),
        error=r"data\.split \('0,1,0'\) leaves no training samples"),
    Bad("check: a weighted dataset without training samples", "check",
        _data(prefixes=lambda t: ["0.5", _dataset(t), "0.5", _dataset(t, "empty", docs=3, lengths=[0, 0, 0])]),
        error=r"leaves '.*empty' \(3 documents\) no training samples"),
    Bad("check: packed samples longer than the data", "check", _data(sample_mode="packed", seq_len=4096),
        error=r"leaves no training samples"),
    # merge_datasets.py
    Bad("merge: different token dtypes", "merge",
        _merge(lambda t: [_dataset(t, "a"), _dataset(t, "b", dtype=np.int32)]),
        error=r"different token dtypes \['int32', 'uint16'\]"),
    Bad("merge: output over an input", "merge", _merge(lambda t: [_dataset(t, "a")], lambda t: str(t / "data" / "a")),
        error="must differ from every input"),
    Bad("merge: incomplete pair", "merge", _merge(lambda t: [_dataset(t, "a"), _damaged_bin_removed(t)]),
        error=r"dataset '.*b' is incomplete: need both"),
    Bad("merge: nothing to merge", "merge", _merge(lambda t: [str(_mkdir(t / "empty"))]),
        error="names no dataset"),
    Bad("merge: corrupt input", "merge",
        _merge(lambda t: [_dataset(t, "a"), _damaged(lambda p: _xor(_idx(p), POINTERS_AT + 8 * 7 + 5, 0xFF),
                                                     name="b")(t)["prefix"]]),
        error=r"b\.idx': sequence 7 of 40 has pointer .*corrupt pointer"),
    # train_tokenizer.py
    Bad("train_tokenizer: no usable text", "train_tokenizer", _tokenizer_corpus("{", json.dumps({"url": 1})),
        error=r"no usable text under key 'text' in 1 input file\(s\); skipped: "
              r"\{'malformed_json': 1, 'missing_key': 1\}"),
    Bad("train_tokenizer: bad lines are counted", "train_tokenizer",
        _tokenizer_corpus(GOOD, "{", b'{"text": "\xff"}', json.dumps({"text": " "}), GOOD),
        skip=("malformed_json", 1), error="skipped: malformed_json 1, missing_key 0, empty_text 1, non_utf8 1"),
]


# ---------------------------------------------------------------------------------------------- the test


def _preprocess_argv(made: dict, out: Path, vocab_file: str, on_error: str) -> list[str]:
    vocab = made.get("vocab", vocab_file)
    return (["--input", str(made["input"]), "--output-prefix", str(out / "o"), *WP, "--on-error", on_error]
            + (["--vocab-file", vocab] if vocab else []) + made.get("flags", []))


@pytest.mark.parametrize("bad", TABLE, ids=[b.name for b in TABLE])
def test_bad_input_is_counted_or_named(bad: Bad, tmp_path, vocab_file, capsys):
    made = bad.make(tmp_path)
    out = tmp_path / "out"
    if bad.tool == "preprocess":
        reason, count = bad.skip
        summary = preprocess(_preprocess_argv(made, out, vocab_file, "skip"))
        assert summary["skipped"] == {r: count if r == reason else 0 for r in SKIP_REASONS}
        if made["good"] is not None:
            assert summary["documents"] == made["good"]
        assert IndexedDataset(out / "o_text_document").num_documents == summary["documents"]
        shutil.rmtree(out)
        with pytest.raises(InputError, match=bad.error):
            preprocess(_preprocess_argv(made, out, vocab_file, "fail"))
        assert not out.exists() or not os.listdir(out)  # no output, not even temporaries
    elif bad.tool == "preprocess_run":
        with pytest.raises(bad.raises, match=bad.error):
            preprocess(_preprocess_argv(made, out, vocab_file, "skip"))
        assert not out.exists() or not os.listdir(out)
    elif bad.tool == "open":
        with pytest.raises(IndexedDatasetError, match=bad.error) as err:
            IndexedDataset(made["prefix"])
        assert made["prefix"] in str(err.value) and "tools/preprocess_data.py" in str(err.value)
    elif bad.tool == "load":
        cfg = made["cfg"]
        cfg.vocab_file = cfg.vocab_file or vocab_file
        with pytest.raises(bad.raises, match=bad.error):
            build_mlm_data(cfg, seed=1, micro_batch_size=4)
    elif bad.tool == "check":
        cfg = made["cfg"]
        cfg.vocab_file = cfg.vocab_file or vocab_file
        with pytest.raises(ConfigError, match=bad.error):
            check_training_data(cfg, model_vocab_size=made["model_vocab_size"])
    elif bad.tool == "merge":
        from megabert.cli import merge_datasets

        assert merge_datasets.main(made["argv"]) == 1
        err = capsys.readouterr().err
        assert re.search(bad.error, err), err
        assert not list(tmp_path.glob("merged*"))
    elif bad.tool == "train_tokenizer":
        from megabert.cli import train_tokenizer

        code = train_tokenizer.main(made["argv"])
        captured = capsys.readouterr()
        if bad.skip:
            assert code == 0 and re.search(bad.error, captured.out), captured.out
        else:
            assert code == 1 and re.search(bad.error, captured.err), captured.err
            assert not (tmp_path / "tok").exists()
    else:
        raise AssertionError(f"unknown tool {bad.tool}")
