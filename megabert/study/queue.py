"""A queue of runs that several workers share: one worker per visible GPU, and any other runner on the same files.

A worker takes the first item that is neither finished nor claimed. It claims an item by creating
`<locks>/<item>.lock` exclusively (O_CREAT | O_EXCL: of several creators exactly one succeeds, on a local file
system as on NFS), works on it in subprocesses pinned to its GPU (CUDA_VISIBLE_DEVICES, as
megabert.tasks.runner does for fine-tuning jobs), then deletes the lock. Two workers, threads of one runner or
runners on different machines sharing the study directory, never take the same item. A lock records the runner's
pid and those of the subprocesses it started; once all of them are gone (same host) the lock is taken over, so a
runner that was killed leaves nothing to clean up. A lock from another host is respected until someone deletes it.

Stopping (SIGINT / SIGTERM to the runner): no new item is claimed, and every running subprocess gets SIGTERM, on
which pretrain_bert.py saves a checkpoint and exits; the next runner resumes from it. The subprocesses run in their
own sessions, so a Ctrl-C reaches only the runner, which stops them that way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

from megabert.tasks.runner import worker_env

T = TypeVar("T")


@dataclass(frozen=True)
class Slot:
    """Where a worker runs its subprocesses: one GPU, or the CPU."""

    name: str
    visible_devices: str
    """CUDA_VISIBLE_DEVICES of its subprocesses ('' hides every GPU)."""
    device: str
    """'cuda' or 'cpu'."""


def find_slots(gpus: Optional[Sequence[str]] = None, cpu_workers: int = 1) -> list[Slot]:
    """One slot per GPU: the ids given, else every GPU visible (CUDA_VISIBLE_DEVICES or all); with none, `cpu_workers`
    CPU slots."""
    if gpus is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            gpus = [g.strip() for g in visible.split(",") if g.strip()]
        else:
            import torch

            gpus = [str(i) for i in range(torch.cuda.device_count())]
    if gpus:
        return [Slot(f"gpu{g}", g, "cuda") for g in gpus]
    return [Slot(f"cpu{i}", "", "cpu") for i in range(max(1, cpu_workers))]


class StageError(RuntimeError):
    """A subprocess of a run failed; the message holds its command, exit status and the end of its log."""


class Stopped(RuntimeError):
    """The runner was asked to stop while this work was running."""


class Processes:
    """The subprocesses the workers run, so a stop request reaches all of them."""

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self.stopping = threading.Event()
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._claim = threading.local()  # (Claims, key) of the item the calling worker thread works on

    def working_on(self, claims: Optional["Claims"], key: Optional[str]) -> None:
        """The calling worker thread works on `key`: its subprocesses' pids go into that item's lock."""
        self._claim.value = (claims, key) if claims is not None else None

    def run(self, command: Sequence[str], log_path: Path, slot: Slot, cwd: Optional[str] = None) -> None:
        """Runs `command` on `slot` with its output in `log_path`; raises StageError when it fails, Stopped when
        a stop request ended it."""
        if self.stopping.is_set():
            raise Stopped("stopping: not starting " + " ".join(command))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write(f"\n$ {' '.join(command)}\n")
            log.flush()
            with self._lock:
                process = subprocess.Popen(list(command), env=worker_env(slot.visible_devices, self.num_slots),
                                           stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
                self._running.add(process)
            claim = getattr(self._claim, "value", None)
            if claim is not None:
                claim[0].add_pid(claim[1], process.pid)
            try:
                code = process.wait()
            finally:
                with self._lock:
                    self._running.discard(process)
        if self.stopping.is_set():
            raise Stopped(f"stopped: {' '.join(command)} (exit {code})")
        if code != 0:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise StageError(f"{' '.join(command)} exited with {code}; the end of {log_path}:\n{tail}")

    def stop(self) -> None:
        """No new subprocess starts; each running one gets SIGTERM (pretrain_bert.py saves a checkpoint)."""
        self.stopping.set()
        with self._lock:
            for process in self._running:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)


class Claims:
    """Lock files in one directory, one per item: who works on what."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = socket.gethostname()

    def path(self, key: str) -> Path:
        return self.directory / (key.replace("/", "__") + ".lock")

    def try_claim(self, key: str, owner: str) -> bool:
        """True when this call created the item's lock; False when someone alive holds it."""
        path = self.path(key)
        for _ in range(2):  # a second try after removing a dead owner's lock
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale(path):
                    return False
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": self.host, "pid": os.getpid(), "owner": owner, "since": time.time()}, f)
            return True
        return False

    def release(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def add_pid(self, key: str, pid: int) -> None:
        """Records a subprocess working on `key` in its lock (rewritten atomically: the lock never disappears)."""
        path = self.path(key)
        holder = json.loads(path.read_text())
        holder["children"] = [*holder.get("children", []), pid]
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(holder))
        os.replace(tmp, path)

    def _stale(self, path: Path) -> bool:
        """Everyone the lock names is gone: written on this host, and neither the runner's pid nor any of its
        subprocesses' exists any more."""
        try:
            holder = json.loads(path.read_text())
            pids = [int(holder["pid"]), *map(int, holder.get("children", []))]
        except (OSError, ValueError, KeyError, TypeError):
            return False  # being written right now, or unreadable: leave it
        if holder.get("host") != self.host:
            return False
        return not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def run_queue(items: Sequence[T], key: Callable[[T], str], is_done: Callable[[T], bool],
              work: Callable[[T, Slot], None], slots: Sequence[Slot], claims: Claims,
              processes: Processes, fits: Callable[[T], bool] = lambda item: True) -> dict[str, str]:
    """Works through `items` with one thread per slot; returns {item key: error} for the items that failed. An
    item is taken at most once per call (a failed one is retried by the next call, never in a loop); one for which
    `fits` is false (it would not finish in the time left) is not started."""
    failed: dict[str, str] = {}
    taken: set[str] = set()
    lock = threading.Lock()

    def next_item(owner: str) -> Optional[T]:
        for item in items:
            if processes.stopping.is_set():
                return None
            with lock:
                if key(item) in taken or is_done(item) or not fits(item) or not claims.try_claim(key(item), owner):
                    continue
                taken.add(key(item))
                return item
        return None

    def worker(slot: Slot) -> None:
        while True:
            item = next_item(slot.name)
            if item is None:
                return
            processes.working_on(claims, key(item))
            try:
                if not is_done(item):  # finished by someone else between our check and our claim
                    work(item, slot)
                    if not is_done(item):
                        raise RuntimeError(f"{key(item)}: every stage ran but the item still looks unfinished")
            except Stopped:
                return
            except Exception as e:  # noqa: BLE001 -- reported with the others at the end
                failed[key(item)] = f"{type(e).__name__}: {e}"
            finally:
                processes.working_on(None, None)
                claims.release(key(item))

    threads = [threading.Thread(target=worker, args=(slot,), name=f"study-{slot.name}", daemon=True)
               for slot in slots]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # joins in short waits, so the main thread still receives signals
            thread.join(0.2)
    return failed
