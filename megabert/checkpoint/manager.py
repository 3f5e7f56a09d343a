"""Checkpoints that a crash never corrupts, and that resume a run exactly.

Layout under checkpoint.dir:
    step_0000100/
        ds/                  DeepSpeed engine state: model, optimizer (ZeRO partitions, one file per rank), lr schedule
        rng/rank_00000.pt    every rank's RNG (Python, NumPy, torch CPU and CUDA)
        trainer_state.json   step, consumed samples, elapsed time ... (written last inside the directory)
        config.json          the resolved run config
    latest                   name of the newest complete checkpoint, rewritten (atomically) after it is published

A save writes everything into `.tmp.step_0000100/`, then rank 0 renames it to `step_0000100/` (an atomic rename on
POSIX file systems) and only then rewrites `latest` (durable.py). A process killed at any moment leaves either the
old checkpoint set or the new one; a stale `.tmp.*` directory is ignored and cleaned up. A published checkpoint is
never rewritten: saving a step that is already published (a finished run started again) keeps it as it is. Every
rank must see the same directory (a shared file system on several nodes), as DeepSpeed itself assumes.

Asynchronous saves (checkpoint.async_save, the default), after Megatron's and torch DCP's async save:
 1. snapshot, blocking, on every rank: DeepSpeed's save_checkpoint runs as usual (its barriers included) but its
    checkpoint engine is swapped for one that records a private host copy of each state dict instead of writing it
    (snapshot.py); the RNG states, trainer state and config are captured at the same moment. Training goes on as
    soon as this returns: on an H200 a megabert-base save (1.9 GB, ZeRO-2 bf16) stops training for 0.04 s,
    against 3.4-4.0 s for DeepSpeed's own torch.save of the device tensors (docs/BENCHMARKS.md).
 2. write, on a background thread per rank, and publish on rank 0 once every rank has written (writer.py).
 3. one save in flight: the next save() first waits for the previous one and its pruning (host memory stays at one
    checkpoint per rank). wait() returns when the save is published on every rank, without waiting for the
    pruning (close() does). A failed write (any rank) raises CheckpointWriteError at the next save() or wait() on
    every rank, naming the checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from megabert.checkpoint.durable import (CheckpointWriteError, crc32_setting, explain_os_errors, publish_directory,
                                         save_durably, write_text_durably)
from megabert.checkpoint.snapshot import PinnedBuffers, RecordingCheckpointEngine, Snapshot
from megabert.checkpoint.writer import BackgroundWriter, PendingSave
from megabert.config import CheckpointConfig
from megabert.utils.distributed import barrier
from megabert.utils.logging import get_logger
from megabert.utils.rng import get_rng_state, set_rng_state

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


def read_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


class CheckpointManager:
    """Saves and loads full training state through a DeepSpeed engine; every rank calls save/wait/load together.

    The trainer calls maybe_save() after every step: it decides from checkpoint.save_interval whether this step
    is saved (the last step always is)."""

    def __init__(self, cfg: CheckpointConfig, rank: int, world_size: int):
        self.cfg = cfg
        self.dir = Path(cfg.dir)
        self.rank = rank
        self.world_size = world_size
        self.last_saved_step: Optional[int] = None
        self._pending: Optional[PendingSave] = None
        self._pruning = None  # the last published save's thread, pruning after it
        self._pinned = PinnedBuffers()
        self._prepared = False
        self._sync_fallback_warned = False
        # late-bound, so a test (or a subclass) can hold back or replace each of them
        self._writer = BackgroundWriter(rank, world_size, lambda obj, path: self._write_file(obj, path),
                                        lambda job: self._publish(job), lambda: self._prune())

    @property
    def in_flight(self) -> bool:
        """A save is being written in the background (wait() publishes it)."""
        return self._pending is not None

    @property
    def write_failed(self) -> bool:
        """This rank's background write of the save in flight has failed (wait() will raise on every rank).
        A host-side read: the trainer checks it every step."""
        job = self._pending
        return job is not None and (job.error is not None or job.publish_error is not None)

    def due(self, step: int, last_step: bool = False) -> bool:
        """Whether `step` is to be saved: every save_interval steps and at the last one, once."""
        if step == self.last_saved_step:
            return False
        return last_step or bool(self.cfg.save_interval and step % self.cfg.save_interval == 0)

    def maybe_save(self, engine, step: int, contents: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
                   last_step: bool = False) -> Optional[Path]:
        """save() when due(step, last_step), of `contents()` = (trainer state, run config), which is only built
        then; the first call also prepares the pinned buffers (prepare())."""
        self.prepare(engine)
        if not self.due(step, last_step):
            return None
        return self.save(engine, step, *contents())

    def save(self, engine, step: int, trainer_state: dict[str, Any], run_config: dict[str, Any]) -> Path:
        """Saves the state at `step`. Synchronous: returns once published. Asynchronous: returns once the state is
        copied to host memory; the checkpoint is published later (wait() for it). A published checkpoint of the
        same step is replaced in one atomic exchange (durable.publish_directory), never deleted first."""
        self._settle()  # one save in flight; a failure of the previous one surfaces here
        self.last_saved_step = step
        final = self.dir / step_dir_name(step)
        tmp = self.dir / f".tmp.{final.name}"
        if self.rank == 0:
            with explain_os_errors(self.dir):
                self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(".tmp.step_*"):  # left by a crashed or failed save (none is in flight)
                shutil.rmtree(stale, ignore_errors=True)
        barrier()
        state_text = json.dumps({**trainer_state, "world_size": self.world_size}, indent=2)
        config_text = json.dumps(run_config, indent=2)
        start = time.perf_counter()
        if self.cfg.async_save and self._can_record(engine):
            self._start_async(engine, step, tmp, final, state_text, config_text)
            if self.rank == 0:
                log.info("saved checkpoint %s in %.2f s (snapshot); writing it in the background", final,
                         time.perf_counter() - start)
            return final
        with explain_os_errors(tmp), crc32_setting(self.cfg.zip_crc32):
            engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, save_latest=False)
        save_durably(get_rng_state(), self._rng_file(tmp), self.cfg.zip_crc32)
        barrier()
        if self.rank == 0:
            self._publish(PendingSave(step, tmp, final, [], {}, self._rng_file(tmp), config_text, state_text, 0.0))
            self._prune()
            log.info("saved checkpoint %s in %.1f s", final, time.perf_counter() - start)
        barrier()
        return final

    def prepare(self, engine) -> float:
        """Allocates the pinned host buffers of asynchronous saves now, once, through one snapshot that is thrown
        away, so that the first save does not pay for page-locking (1.5-1.8 s for megabert-base's 1.9 GB on an
        H200). Call it on every rank once the optimizer state exists (after the first step); later calls return
        at once. Returns the seconds spent."""
        if self._prepared:
            return 0.0
        self._prepared = True
        if not (self.cfg.async_save and torch.cuda.is_available() and self._can_record(engine)):
            return 0.0
        self._settle()
        start = time.perf_counter()
        scratch = self.dir / ".tmp.step_pinning"  # the stale-directory sweep of save() removes it if left behind
        snapshot, _ = self._record(engine, scratch)
        snapshot.finish()
        barrier()
        if self.rank == 0:
            shutil.rmtree(scratch, ignore_errors=True)
        seconds = time.perf_counter() - start
        if self.rank == 0:
            log.info("pinned host buffers for asynchronous checkpoints in %.1f s", seconds)
        return seconds

    def wait(self) -> Optional[Path]:
        """Blocks until the save in flight is published; every rank calls it (it ends with collectives). Returns
        that checkpoint (None when none was in flight); raises CheckpointWriteError on every rank if any rank
        failed to write it or rank 0 failed to publish it. Checkpoints beyond keep_last are deleted after this
        returns, on the writer's thread; the next save and close() wait for that."""
        job, self._pending = self._pending, None
        if job is None:
            return None
        job.own_done.wait()
        failed = self._ranks_reporting(job.error is not None)
        if failed:
            job.abort.set()
        job.settled.wait()
        self._pruning = job.thread
        if not failed:  # rank 0's publish; also the barrier after which every rank sees it published
            failed = self._ranks_reporting(job.publish_error is not None)
        if failed:
            cause = job.error or job.publish_error
            previous = latest_checkpoint(self.dir)
            raise CheckpointWriteError(
                f"checkpoint {job.final} (step {job.step}) was not saved: rank(s) {failed} failed to write or publish "
                f"it{f' ({cause})' if cause else ' (see their log)'}; `latest` still names "
                f"{previous.name if previous else 'no checkpoint'}") from cause
        return job.final

    def close(self, timeout_s: float = 300.0) -> None:
        """At the end of a run: lets the pruning after the last save finish. After an exception also the save in
        flight (up to timeout_s, without collectives: other ranks may be gone); if it does not finish, its `.tmp`
        stays behind and `latest` names the previous one."""
        if self._pruning is not None:
            self._pruning.join(timeout_s)
            self._pruning = None
        job, self._pending = self._pending, None
        if job is None:
            return
        job.thread.join(timeout_s)
        if job.thread.is_alive() or job.error is not None or job.publish_error is not None:
            job.abort.set()
            log.warning("checkpoint %s was not published; `latest` names the previous one", job.final)

    def load(self, engine, path: Path) -> dict[str, Any]:
        """Restores engine (model, optimizer, schedule) and this rank's RNG; returns the trainer state."""
        path = Path(path)
        state = read_trainer_state(path)
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
        self.last_saved_step = state["step"]
        return state

    # ----------------------------------------------------------------------------------------------- async
    def _can_record(self, engine) -> bool:
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

        if isinstance(engine.checkpoint_engine, TorchCheckpointEngine):
            return True
        if not self._sync_fallback_warned:
            log.warning("checkpoint.async_save: DeepSpeed uses %s, not torch.save; saving synchronously",
                        type(engine.checkpoint_engine).__name__)
            self._sync_fallback_warned = True
        return False

    def _record(self, engine, directory: Path) -> tuple[Snapshot, list[tuple[str, Any]]]:
        """DeepSpeed's save_checkpoint into `directory`, with host copies recorded instead of files written:
        the snapshot (finish() still to call) and the (path, state) pairs."""
        snapshot = Snapshot(self._pinned)
        recorder = RecordingCheckpointEngine(snapshot)
        original, engine.checkpoint_engine = engine.checkpoint_engine, recorder
        try:
            engine.save_checkpoint(str(directory), tag=ENGINE_TAG, save_latest=False)
        finally:
            engine.checkpoint_engine = original
        return snapshot, recorder.recorded

    def _start_async(self, engine, step: int, tmp: Path, final: Path, state_text: str, config_text: str) -> None:
        start = time.perf_counter()
        snapshot, recorded = self._record(engine, tmp)
        rng = get_rng_state()
        snapshot.finish()
        job = PendingSave(step, tmp, final, recorded, rng, self._rng_file(tmp), config_text, state_text,
                          time.perf_counter() - start)
        self._writer.start(job)
        self._pending = job

    def _write_file(self, obj: Any, path: Path) -> None:
        """Always torch.save's zip format, whatever DeepSpeed's checkpoint_serialization says (torch.load reads
        both): it releases the GIL while writing tensor data, where the legacy format holds it for the whole
        write and so stalls the training loop."""
        save_durably(obj, path, self.cfg.zip_crc32)

    def _settle(self) -> None:
        """wait(), and for the pruning of the save before: only then may the next save start."""
        self.wait()
        if self._pruning is not None:
            self._pruning.join()
            self._pruning = None

    def _ranks_reporting(self, flag: bool) -> list[int]:
        """The ranks where `flag` is set (an all-reduce when there is a process group)."""
        if not (dist.is_available() and dist.is_initialized()) or self.world_size == 1:
            return [self.rank] if flag else []
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        flags = torch.zeros(self.world_size, dtype=torch.int32, device=device)
        flags[self.rank] = int(flag)
        dist.all_reduce(flags)
        return flags.nonzero().flatten().tolist()

    # ----------------------------------------------------------------------------------------------- both
    def _rng_file(self, tmp: Path) -> Path:
        return tmp / "rng" / f"rank_{self.rank:05d}.pt"

    def _publish(self, job: PendingSave) -> None:
        """Rank 0, once every rank's files are in job.tmp: the run config and, last, the trainer state; then the
        atomic switch."""
        write_text_durably(job.tmp / "config.json", job.config_text)
        write_text_durably(job.tmp / STATE_FILE, job.state_text)
        publish_directory(job.tmp, job.final, self.dir / LATEST_FILE)

    def _prune(self) -> None:
        if self.cfg.keep_last <= 0:
            return
        for old in list_checkpoints(self.dir)[:-self.cfg.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
