"""Merge Megatron .bin/.idx datasets (e.g. one per C4 shard) into one, by copying bytes (no re-tokenizing).

The command lives in megabert/cli/merge_datasets.py; installed, it is also the console script `megabert-merge-datasets`.
"""

import sys

from megabert.cli.merge_datasets import main

if __name__ == "__main__":
    sys.exit(main())
