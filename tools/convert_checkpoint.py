"""Convert megabert model directories to and from the formats the ecosystem reads.

The command lives in megabert/cli/convert_checkpoint.py; installed, it is also the console script `megabert-convert-checkpoint`.
"""

import sys

from megabert.cli.convert_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
