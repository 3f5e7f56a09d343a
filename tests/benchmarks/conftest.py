"""The data benchmarks' tests use the data tests' fixtures (the bundled sample corpus, its vocabulary)."""

from tests.data.conftest import sample_prefix, sample_texts, vocab_file, write_jsonl  # noqa: F401
