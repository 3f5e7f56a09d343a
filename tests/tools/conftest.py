"""Converter and plot tests run torch on one thread (the CPU runners are shared)."""

from pathlib import Path

import pytest
import torch

from tests.tasks.tiny_model import build_vocab


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    build_vocab(path)
    return path
