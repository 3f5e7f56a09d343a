"""Fine-tuning tests share a WordPiece vocab and run torch on one thread."""

from tests.tasks.tiny_model import one_thread, vocab_file  # noqa: F401
