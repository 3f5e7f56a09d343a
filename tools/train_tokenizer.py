"""Train a WordPiece (BERT) or SentencePiece tokenizer on C4-style JSON lines; vocabulary padded to a multiple of 64.

The command lives in megabert/cli/train_tokenizer.py; installed, it is also the console script `megabert-train-tokenizer`.
"""

import sys

from megabert.cli.train_tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
