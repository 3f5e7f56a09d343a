"""Fixtures for the data tests: real text from the bundled sample corpus, its vocabulary, small datasets."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def vocab_file() -> str:
    path = SAMPLE / "vocab.txt"
    assert path.is_file(), "data/sample/vocab.txt is missing (it is committed; see data/sample/README.md)"
    return str(path)


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    """The first 600 documents of the sample corpus."""
    texts = []
    with gzip.open(SAMPLE / "c4-train.00000-of-00001.json.gz", "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == 600:
                break
    return texts


def write_jsonl(path: Path, records: list, compress: bool = None) -> Path:
    """Writes records (dicts, or raw str/bytes lines) as JSON lines; gzip when the name ends in .gz."""
    compress = path.suffix == ".gz" if compress is None else compress
    data = b"".join((r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()) + b"\n"
                    for r in records)
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def preprocess(argv: list[str]) -> dict:
    """Runs tools/preprocess_data.py in-process; returns its summary."""
    from megabert.cli import preprocess_data

    args = preprocess_data.build_parser().parse_args(argv + ["--no-progress"])
    return preprocess_data.run(args)


@pytest.fixture(scope="session")
def sample_prefix(tmp_path_factory, sample_texts, vocab_file) -> str:
    """A dataset of the 600 sample documents (document level, uint16)."""
    root = tmp_path_factory.mktemp("sample_ds")
    src = write_jsonl(root / "c4-train.00000-of-00002.json.gz",
                      [{"text": t, "timestamp": "2020-01-01T00:00:00Z", "url": f"u{i}"} for i, t in
                       enumerate(sample_texts)])
    preprocess(["--input", str(src), "--output-prefix", str(root / "c4"), "--tokenizer-type",
                "BertWordPieceLowerCase", "--vocab-file", vocab_file])
    return str(root / "c4_text_document")
