"""Builders shared by the fine-tuning and converter tests: a WordPiece vocab and a tiny megabert model dir."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
import torch

from megabert.config import ModelConfig
from megabert.model.bert import MosaicBertForMaskedLM
from megabert.model.pretrained import save_pretrained
from megabert.model.pretrained import attach_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
GLUE_SAMPLE = REPO_ROOT / "data" / "glue_sample"


def build_vocab(path: Path, vocab_size: int = 256) -> int:
    """WordPiece vocab trained on the GLUE sample texts, padded with [unused] rows to a multiple of 64."""
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train(sorted(glob.glob(str(GLUE_SAMPLE / "*" / "*.tsv"))), vocab_size=vocab_size, min_frequency=1,
                    special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False)
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    padded = -(-len(tokens) // 64) * 64
    tokens += [f"[unused{i}]" for i in range(padded - len(tokens))]
    path.write_text("\n".join(tokens) + "\n")
    return padded


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
    fields = dict(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                  max_position_embeddings=64, hidden_dropout=0.0, attention_backend="sdpa")
    fields.update(overrides)
    return ModelConfig(**fields)


def make_model_dir(directory: Path, vocab_file: Path, seed: int = 0, pretraining_seq_len: int = 64,
                   **overrides) -> Path:
    """A randomly initialised MLM model saved as a megabert model dir with its tokenizer attached."""
    vocab_size = sum(1 for _ in open(vocab_file))
    cfg = tiny_config(vocab_size, **overrides)
    torch.manual_seed(seed)
    model = MosaicBertForMaskedLM(cfg)
    save_pretrained(model, directory, cfg, extra={"data": {"seq_len": pretraining_seq_len}})
    attach_tokenizer(directory, "BertWordPieceLowerCase", vocab_file=str(vocab_file))
    return directory


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def load_tool(name: str):
    """The module of the user command tools/<name>.py (megabert/cli/<name>.py)."""
    import importlib

    return importlib.import_module(f"megabert.cli.{name}")


# Fixtures, imported by tests/tasks/conftest.py and tests/tools/conftest.py.


@pytest.fixture(autouse=True)
def one_thread():
    """torch on one thread: the CPU runners are shared, and two threads contend badly on tiny ops."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    build_vocab(path)
    return path
