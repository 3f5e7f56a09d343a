"""Logging that only rank 0 speaks through (other ranks report warnings and errors only)."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname).1s [rank{rank}] %(message)s"


def setup_logging(rank: int | None = None, level: int = logging.INFO) -> None:
    """Configures the 'megabert' logger: INFO on rank 0, WARNING elsewhere, one line per record on stderr.

    The rank is read from the environment when not given, so a call before the process group exists is right.
    """
    if rank is None:
        rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    root = logging.getLogger("megabert")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT.format(rank=rank), datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
    root.propagate = False


def get_logger(name: str) -> logging.Logger:
    """A child of the 'megabert' logger (module names under megabert already are)."""
    return logging.getLogger(name if name.startswith("megabert") else f"megabert.{name}")
