"""Tokenize C4-style JSON lines into Megatron .bin/.idx datasets (MMIDIDX v1), with worker processes.

The command lives in megabert/cli/preprocess_data.py; installed, it is also the console script `megabert-preprocess-data`.
"""

import sys

from megabert.cli.preprocess_data import main

if __name__ == "__main__":
    sys.exit(main())
