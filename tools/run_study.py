"""Run a study: is MosaicBERT better than BERT on this corpus at these budgets, and what does each modification buy?

The command lives in megabert/cli/run_study.py; installed, it is also the console script `megabert-run-study`.
"""

import sys

from megabert.cli.run_study import main

if __name__ == "__main__":
    sys.exit(main())
