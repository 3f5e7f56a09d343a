"""Index arrays cached as .npy files named by a hash of the parameters that produced them.

Every rank may build the same array at the same time: each writes its own temporary file and renames it over
the final name (atomic on POSIX), so the result is one complete file whichever rank wins, and no lock or
collective is needed. Arrays are loaded memory-mapped, so ranks on a node share one copy in the page cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

log = logging.getLogger(__name__)


def parameter_key(params: dict) -> str:
    """Short stable hash of a JSON-serialisable description."""
    return hashlib.md5(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_directory(prefix: str, cache_dir: Optional[str]) -> Path:
    """``cache_dir`` when given, else the data's own directory; a read-only data directory falls back to
    ~/.cache/megabert/index."""
    if cache_dir:
        path = Path(cache_dir)
    else:
        path = Path(prefix).resolve().parent
        if not os.access(path, os.W_OK):
            fallback = Path.home() / ".cache" / "megabert" / "index"
            log.warning("data directory %s is not writable; caching sample indices in %s", path, fallback)
            path = fallback
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_array(path: Path, build: Callable[[], np.ndarray]) -> np.ndarray:
    """Loads ``path`` (memory-mapped) or builds, saves atomically and returns the array."""
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError) as err:  # a foreign or damaged file: rebuild it
            log.warning("rebuilding unreadable index cache %s (%s)", path, err)
    array = np.ascontiguousarray(build())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return array
