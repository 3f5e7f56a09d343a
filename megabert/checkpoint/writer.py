"""The background half of an asynchronous save: write this rank's files, then (rank 0) publish once all have.

Protocol, on a thread per rank, after the snapshot (snapshot.py) has taken a private host copy of the state:
 1. every rank writes its recorded files and its RNG file, each fsynced, then a marker
    `.tmp.step_N/written/rank_XXXXX` (or `rank_XXXXX.failed` holding the error);
 2. rank 0 polls the shared directory -- no collectives, which would race the training loop's -- until every
    rank's marker is there, then writes trainer_state.json and config.json and publishes the directory
    (durable.publish_directory); a `.failed` marker ends the wait without publishing;
 3. rank 0 then prunes older checkpoints, after `settled` is set (wait() returns without waiting for that).
Nothing half-written is ever published: until the rename, `latest` names the previous checkpoint.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from megabert.checkpoint.durable import CheckpointWriteError, write_text_durably
from megabert.utils.logging import get_logger

log = get_logger(__name__)

MARKER_DIR = "written"  # .tmp.step_N/written/rank_XXXXX: that rank's files are all on disk
FAILED_SUFFIX = ".failed"  # .tmp.step_N/written/rank_XXXXX.failed: that rank could not write them


@dataclass
class PendingSave:
    """One checkpoint being written in the background on this rank."""

    step: int
    tmp: Path
    final: Path
    files: list  # [(path, host copy of a DeepSpeed state dict)], emptied once written
    rng: dict
    rng_file: Path
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


class BackgroundWriter:
    """Runs PendingSaves on threads. `write_file(obj, path)` writes one file durably, `publish(job)` completes and
    publishes a checkpoint whose every rank has written (rank 0), `prune()` deletes old ones afterwards."""

    def __init__(self, rank: int, world_size: int, write_file: Callable[[Any, Path], None],
                 publish: Callable[[PendingSave], None], prune: Callable[[], None]):
        self.rank, self.world_size = rank, world_size
        self._write_file, self._publish, self._prune = write_file, publish, prune

    def start(self, job: PendingSave) -> None:
        job.thread = threading.Thread(target=self._run, args=(job,), daemon=True,
                                      name=f"checkpoint-writer-{job.final.name}")
        job.thread.start()

    def _run(self, job: PendingSave) -> None:
        start = time.perf_counter()
        marker = job.tmp / MARKER_DIR / f"rank_{self.rank:05d}"
        try:
            while job.files:
                path, state = job.files.pop(0)  # drop the host copy once written
                self._write_file(state, Path(path))
                del state
            self._write_file(job.rng, job.rng_file)
            marker.parent.mkdir(parents=True, exist_ok=True)
            write_text_durably(marker, f"{time.time():.3f}")
        except BaseException as e:  # noqa: BLE001 -- handed to the main thread by wait()
            job.error = e
            log.error("rank %d could not write checkpoint %s: %s", self.rank, job.final, e)
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                write_text_durably(marker.with_name(marker.name + FAILED_SUFFIX), repr(e))
            except (OSError, CheckpointWriteError):
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
            self._publish(job)
            now = time.perf_counter()
            log.info("published checkpoint %s: written in %.2f s in the background (this rank's files %.2f s, other "
                     "ranks %.2f s, publish %.2f s; training stopped for %.2f s)", job.final, now - start,
                     written - start, markers - written, now - markers, job.snapshot_seconds)
        except BaseException as e:  # noqa: BLE001
            job.publish_error = e
            log.error("could not publish checkpoint %s: %s", job.final, e)
            return
        finally:
            job.settled.set()
        try:  # after wait() has returned: deleting the oldest checkpoint (0.6 s for 1.9 GB) delays nothing
            self._prune()
        except OSError as e:
            log.warning("could not delete old checkpoints beside %s: %r", job.final, e)

    def _await_markers(self, job: PendingSave) -> bool:
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
