"""Plots for the paper's figures: quality against training time with the Pareto frontier, and throughput bars.

The command lives in megabert/cli/plot_pareto.py; installed, it is also the console script `megabert-plot-pareto`.
"""

import sys

from megabert.cli.plot_pareto import main

if __name__ == "__main__":
    sys.exit(main())
