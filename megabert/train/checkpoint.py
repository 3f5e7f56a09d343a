"""Checkpoints that a crash never corrupts, and that resume a run exactly.

Layout under checkpoint.dir:
    step_0000100/
        ds/                  DeepSpeed engine state: model, optimizer (ZeRO partitions, one file per rank), lr schedule
        rng/rank_00000.pt    every rank's RNG (Python, NumPy, torch CPU and CUDA)
        trainer_state.json   step, consumed samples, elapsed time ... (written last inside the directory)
        config.json          the resolved run config
    latest                   name of the newest complete checkpoint, rewritten (atomically) after it is published

A save writes everything into `.tmp.step_0000100/`, then rank 0 renames it to `step_0000100/` (an atomic rename on
POSIX file systems) and only then rewrites `latest` through a temporary file. A process killed at any moment
leaves either the old checkpoint set or the new one; a stale `.tmp.*` directory is ignored and cleaned up.
Every rank must see the same directory (a shared file system on several nodes), as DeepSpeed itself assumes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from megabert.config import CheckpointConfig
from megabert.utils.distributed import barrier
from megabert.utils.logging import get_logger

log = get_logger(__name__)

ENGINE_TAG = "ds"
STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints (published step_* directories holding a trainer state), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(directory: str | Path) -> Optional[Path]:
    """The newest complete checkpoint: what `latest` names, or a newer complete one if a crash hit between the
    rename and the pointer update."""
    complete = list_checkpoints(directory)
    pointer = Path(directory) / LATEST_FILE
    if pointer.is_file():
        named = Path(directory) / pointer.read_text().strip()
        if named in complete and named == complete[-1]:
            return named
    return complete[-1] if complete else None


def resolve_resume(cfg: CheckpointConfig) -> Optional[Path]:
    """'none' -> None; 'auto' -> latest in cfg.dir (None on a fresh run); a path -> that checkpoint (must exist).

    A path may be a checkpoint directory or a checkpoint.dir (then its latest is taken).
    """
    if cfg.resume in ("none", "", None):
        return None
    if cfg.resume == "auto":
        return latest_checkpoint(cfg.dir)
    path = Path(cfg.resume)
    if (path / STATE_FILE).is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"checkpoint.resume {cfg.resume!r} is neither a checkpoint (no {STATE_FILE}) nor a "
                                f"directory holding complete checkpoints")
    return found


def get_rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointManager:
    """Saves and loads full training state through a DeepSpeed engine; every rank calls save/load together."""

    def __init__(self, cfg: CheckpointConfig, rank: int, world_size: int):
        self.cfg = cfg
        self.dir = Path(cfg.dir)
        self.rank = rank
        self.world_size = world_size

    def save(self, engine, step: int, trainer_state: dict[str, Any], run_config: dict[str, Any]) -> Path:
        final = self.dir / step_dir_name(step)
        tmp = self.dir / f".tmp.{final.name}"
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed save
        barrier()
        engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, save_latest=False)
        (tmp / "rng").mkdir(parents=True, exist_ok=True)
        torch.save(get_rng_state(), tmp / "rng" / f"rank_{self.rank:05d}.pt")
        barrier()
        if self.rank == 0:
            (tmp / "config.json").write_text(json.dumps(run_config, indent=2) + "\n")
            _write_durably(tmp / STATE_FILE, json.dumps({**trainer_state, "world_size": self.world_size}, indent=2))
            self._publish(tmp, final)
            self._prune()
        barrier()
        return final

    def _publish(self, tmp: Path, final: Path) -> None:
        """Atomic switch: rename the finished directory into place, then point `latest` at it."""
        if final.exists():  # re-saving a step (e.g. a resumed run that ends where it started)
            stale = final.with_name(f".old.{final.name}")
            shutil.rmtree(stale, ignore_errors=True)
            final.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.rename(final)
        _fsync_dir(self.dir)
        _write_durably(self.dir / LATEST_FILE, final.name)

    def _prune(self) -> None:
        if self.cfg.keep_last <= 0:
            return
        for old in list_checkpoints(self.dir)[:-self.cfg.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, engine, path: Path) -> dict[str, Any]:
        """Restores engine (model, optimizer, schedule) and this rank's RNG; returns the trainer state."""
        path = Path(path)
        state = json.loads((path / STATE_FILE).read_text())
        loaded, _ = engine.load_checkpoint(str(path), tag=ENGINE_TAG, load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the engine state from {path / ENGINE_TAG}")
        rng_file = path / "rng" / f"rank_{self.rank:05d}.pt"
        if state.get("world_size") == self.world_size and rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            log.warning("checkpoint %s was written by %s ranks, this run has %d: RNG streams restart from the seed "
                        "(data order and weights are still exact)", path, state.get("world_size"), self.world_size)
        return state


def _write_durably(path: Path, text: str) -> None:
    """Write to a temporary name, fsync, rename: readers see the old content or the new, never a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
