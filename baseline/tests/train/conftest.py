"""The bundled sample corpus, preprocessed once per test session (reused when the main job already made it)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> dict:
    """data section overrides pointing at the preprocessed sample corpus; sample-index caches go to a tmp dir."""
    prefix = SAMPLE / "c4_sample_text_document"
    if not Path(str(prefix) + ".idx").is_file():
        out = tmp_path_factory.mktemp("sample")
        subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input",
                        str(SAMPLE / "c4-train.00000-of-00001.json.gz"), "--output-prefix", str(out / "c4_sample"),
                        "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", str(SAMPLE / "vocab.txt"),
                        "--workers", "2"], check=True, capture_output=True)
        prefix = out / "c4_sample_text_document"
    return {"data_path": [str(prefix)], "vocab_file": str(SAMPLE / "vocab.txt"),
            "cache_dir": str(tmp_path_factory.mktemp("index_cache"))}
