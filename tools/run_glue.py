"""Fine-tune a megabert model on GLUE and/or your own task; write a results table (markdown + JSON).

The command lives in megabert/cli/run_glue.py; installed, it is also the console script `megabert-run-glue`.
"""

import sys

from megabert.cli.run_glue import main

if __name__ == "__main__":
    sys.exit(main())
