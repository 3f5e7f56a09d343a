"""Shared test setup: one JIT-extension cache for every DeepSpeed start, markers for GPU and slow tests, the
bundled sample corpus preprocessed once per session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# DeepSpeed JIT-compiles its shm communication op on each fresh cache (~40 s): share one cache across tests.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "megabert-torch-extensions"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "data" / "sample"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: multi-process or long-running test")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> dict:
    """data section overrides pointing at the preprocessed sample corpus; sample-index caches go to a tmp dir."""
    prefix = SAMPLE_DIR / "c4_sample_text_document"
    if not Path(str(prefix) + ".idx").is_file():
        out = tmp_path_factory.mktemp("sample")
        subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "preprocess_data.py"), "--input",
                        str(SAMPLE_DIR / "c4-train.00000-of-00001.json.gz"), "--output-prefix", str(out / "c4_sample"),
                        "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", str(SAMPLE_DIR / "vocab.txt"),
                        "--workers", "2"], check=True, capture_output=True)
        prefix = out / "c4_sample_text_document"
    return {"data_path": [str(prefix)], "vocab_file": str(SAMPLE_DIR / "vocab.txt"),
            "cache_dir": str(tmp_path_factory.mktemp("index_cache"))}
