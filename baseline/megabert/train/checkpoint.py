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

Asynchronous saves (checkpoint.async_save, the default), after Megatron's and torch DCP's async save:
 1. snapshot, blocking, on every rank: DeepSpeed's save_checkpoint runs as usual (its barriers included) but its
    checkpoint engine is swapped for one that records a private host copy of each state dict instead of writing it
    (train/snapshot.py); the RNG states, trainer state and config are captured at the same moment. Training goes on
    as soon as this returns.
 2. write, on a background thread per rank: the recorded files, the RNG file, each fsynced, then a marker
    `.tmp.step_N/written/rank_XXXXX`. Rank 0's thread then waits on the file system (no collectives: they would
    race the training loop's) until every rank's marker is there, writes trainer_state.json and config.json and
    publishes as above; then it prunes. Until the publish `latest` names the previous checkpoint.
 3. one save in flight: the next save() first waits for the previous one and its pruning (host memory stays at one
    checkpoint per rank). wait() returns when the save is published on every rank, without waiting for the
    pruning (close() does); the trainer calls it before it exports the model, at the end and before it exits on a
    stop signal. A failed write (any rank) raises CheckpointWriteError
    at the next save() or wait() on every rank, naming the checkpoint; nothing half-written is ever published.
Device tensors are copied into pinned host buffers that the next snapshot reuses.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist

from megabert.config import CheckpointConfig
from megabert.train.snapshot import HostStaging, RecordingCheckpointEngine, Snapshot
from megabert.utils.distributed import barrier
from megabert.utils.logging import get_logger

log = get_logger(__name__)

ENGINE_TAG = "ds"
STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"
MARKER_DIR = "written"  # .tmp.step_N/written/rank_XXXXX: that rank's files are all on disk (async saves)
FAILED_SUFFIX = ".failed"  # .tmp.step_N/written/rank_XXXXX.failed: that rank could not write them
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


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written or published; `latest` still names the previous one."""


@dataclass
class _Write:
    """One checkpoint being written in the background on this rank."""

    step: int
    tmp: Path
    final: Path
    files: list  # [(path, host copy of a DeepSpeed state dict)], emptied once written
    rng: dict
    config_text: str
    state_text: str
    snapshot_seconds: float
    own_done: threading.Event = field(default_factory=threading.Event)  # this rank's files and marker are written
    abort: threading.Event = field(default_factory=threading.Event)  # rank 0: stop waiting for the other ranks
    error: Optional[BaseException] = None  # writing this rank's files failed
    publish_error: Optional[BaseException] = None  # rank 0: waiting for the markers or publishing failed
    settled: threading.Event = field(default_factory=threading.Event)  # published, failed or given up: what wait()
    # waits for; rank 0's thread then prunes older checkpoints, which the next save and close() wait for
    thread: Optional[threading.Thread] = None


class CheckpointManager:
    """Saves and loads full training state through a DeepSpeed engine; every rank calls save/wait/load together."""

    def __init__(self, cfg: CheckpointConfig, rank: int, world_size: int):
        self.cfg = cfg
        self.dir = Path(cfg.dir)
        self.rank = rank
        self.world_size = world_size
        self._pending: Optional[_Write] = None
        self._pruning: Optional[threading.Thread] = None  # the last published save's thread, pruning after it
        self._staging = HostStaging()
        self._sync_fallback_warned = False

    @property
    def in_flight(self) -> bool:
        """A save is being written in the background (wait() publishes it)."""
        return self._pending is not None

    def save(self, engine, step: int, trainer_state: dict[str, Any], run_config: dict[str, Any]) -> Path:
        """Saves the state at `step`. Synchronous: returns once published. Asynchronous: returns once the state is
        copied to host memory; the checkpoint is published later (wait() for it)."""
        self._settle()  # one save in flight; a failure of the previous one surfaces here
        final = self.dir / step_dir_name(step)
        tmp = self.dir / f".tmp.{final.name}"
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(".tmp.step_*"):  # left by a crashed or failed save (none is in flight)
                shutil.rmtree(stale, ignore_errors=True)
        barrier()
        state_text = json.dumps({**trainer_state, "world_size": self.world_size}, indent=2)
        config_text = json.dumps(run_config, indent=2)
        if self.cfg.async_save and self._can_record(engine):
            self._start_async(engine, step, tmp, final, state_text, config_text)
            return final
        with zip_crc32(self.cfg.zip_crc32):
            engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, save_latest=False)
            _save_durably(get_rng_state(), self._rng_file(tmp))
        barrier()
        if self.rank == 0:
            self._finish(tmp, final, config_text, state_text)
        barrier()
        return final

    def prepare(self, engine) -> float:
        """Allocates the pinned host buffers of asynchronous saves now, through one snapshot that is thrown away,
        so that the first save does not pay for page-locking (1.5-1.8 s for megabert-base's 1.9 GB on an H200,
        docs/BENCHMARKS.md runs 9-11).
        Call it on every rank once the optimizer state exists (after the first step). Returns the seconds spent."""
        if not (self.cfg.async_save and torch.cuda.is_available() and self._can_record(engine)):
            return 0.0
        self._settle()
        start = time.perf_counter()
        scratch = self.dir / ".tmp.step_staging"  # the stale-directory sweep of save() removes it if left behind
        snapshot, _ = self._record(engine, scratch)
        snapshot.finish()
        barrier()
        if self.rank == 0:
            shutil.rmtree(scratch, ignore_errors=True)
        return time.perf_counter() - start

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
        snapshot = Snapshot(self._staging)
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
        rng = get_rng_state()  # fresh objects, not views of the live generators
        snapshot.finish()
        job = _Write(step, tmp, final, recorded, rng, config_text, state_text, time.perf_counter() - start)
        job.thread = threading.Thread(target=self._write, args=(job,), daemon=True,
                                      name=f"checkpoint-writer-{final.name}")
        job.thread.start()
        self._pending = job

    def _write(self, job: _Write) -> None:
        """Background thread: this rank's files and marker; then, on rank 0, wait for every marker and publish.

        Always torch.save's zip format, whatever DeepSpeed's checkpoint_serialization says (torch.load reads both):
        it releases the GIL while writing tensor data, where the legacy format holds it for the whole write and
        so stalls the training loop while it writes."""
        start = time.perf_counter()
        marker = job.tmp / MARKER_DIR / f"rank_{self.rank:05d}"
        try:
            while job.files:
                path, state = job.files.pop(0)  # drop the host copy once written
                self._write_file(state, Path(path))
                del state
            self._write_file(job.rng, self._rng_file(job.tmp))
            marker.parent.mkdir(parents=True, exist_ok=True)
            _write_durably(marker, f"{time.time():.3f}")
        except BaseException as e:  # noqa: BLE001 -- handed to the main thread by wait()
            job.error = e
            log.error("rank %d could not write checkpoint %s: %r", self.rank, job.final, e)
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                _write_durably(marker.with_name(marker.name + FAILED_SUFFIX), repr(e))
            except OSError:
                pass  # rank 0 then learns of it through wait()
        finally:
            job.own_done.set()
        if job.error is not None or self.rank != 0:
            job.settled.set()
            return
        try:
            written = time.perf_counter()
            if not self._await_markers(job):
                return
            shutil.rmtree(job.tmp / MARKER_DIR)
            markers = time.perf_counter()
            self._complete(job.tmp, job.final, job.config_text, job.state_text)
            now = time.perf_counter()
            log.info("published checkpoint %s: written in %.2f s in the background (this rank's files %.2f s, other "
                     "ranks %.2f s, publish %.2f s; training stopped for %.2f s)", job.final, now - start,
                     written - start, markers - written, now - markers, job.snapshot_seconds)
        except BaseException as e:  # noqa: BLE001
            job.publish_error = e
            log.error("could not publish checkpoint %s: %r", job.final, e)
            return
        finally:
            job.settled.set()
        try:  # after wait() has returned: deleting the oldest checkpoint (0.6 s for 1.9 GB) delays nothing
            self._prune()
        except OSError as e:
            log.warning("could not delete old checkpoints in %s: %r", self.dir, e)

    def _write_file(self, obj: Any, path: Path) -> None:
        with zip_crc32(self.cfg.zip_crc32):
            _save_durably(obj, path)

    def _await_markers(self, job: _Write) -> bool:
        """Polls the shared directory until every rank has written its files; False when told to give up."""
        expected = {f"rank_{r:05d}" for r in range(self.world_size)}
        pause = 0.005
        while not job.abort.is_set():
            present = set(os.listdir(job.tmp / MARKER_DIR)) if (job.tmp / MARKER_DIR).is_dir() else set()
            failed = sorted(name for name in present if name.endswith(FAILED_SUFFIX))
            if failed:
                raise CheckpointWriteError(f"{', '.join(f[:-len(FAILED_SUFFIX)] for f in failed)} failed to write")
            if expected <= present:
                return True
            job.abort.wait(pause)
            pause = min(pause * 2, 0.5)
        return False

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
                f"it{f' ({cause!r})' if cause else ' (see their log)'}; `latest` still names "
                f"{previous.name if previous else 'no checkpoint'}") from cause
        return job.final

    def _settle(self) -> None:
        """wait(), and for the pruning of the save before: only then may the next save start."""
        self.wait()
        if self._pruning is not None:
            self._pruning.join()
            self._pruning = None

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

    def _finish(self, tmp: Path, final: Path, config_text: str, state_text: str) -> None:
        """Rank 0, once every rank's files are in `tmp`: complete and publish, then prune."""
        self._complete(tmp, final, config_text, state_text)
        self._prune()

    def _complete(self, tmp: Path, final: Path, config_text: str, state_text: str) -> None:
        """Rank 0: the run config and, last, the trainer state into `tmp`; then publish it."""
        _write_durably(tmp / "config.json", config_text)
        _write_durably(tmp / STATE_FILE, state_text)
        self._publish(tmp, final)

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


@contextlib.contextmanager
def zip_crc32(enabled: bool) -> Iterator[None]:
    """torch.save computes its per-record CRC32 or not inside (torch >= 2.6; the setting is process-wide in torch
    and restored on exit; a save on another thread meanwhile only differs in whether it computes the checksum)."""
    try:
        from torch.utils.serialization import config
    except ImportError:  # older torch: always computes it
        yield
        return
    previous = config.save.compute_crc32
    config.save.compute_crc32 = enabled
    try:
        yield
    finally:
        config.save.compute_crc32 = previous


def _save_durably(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    _fsync_file(path)


def _fsync_file(path: str | Path) -> None:
    """Flushes a file another writer (torch.save) has closed: it is on disk before any marker says so."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
