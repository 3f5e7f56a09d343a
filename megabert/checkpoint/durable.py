"""Writes that a crash never tears: every file reaches the disk before anything names it.

A reader (a resuming run, `latest_checkpoint`) sees either the old state or the new one:
  - a small file is written under a temporary name, fsynced, then renamed over the old one;
  - a torch.save file is fsynced before any marker or pointer says it exists;
  - a checkpoint directory is published by one rename, then the `latest` pointer is rewritten.
A full disk or any other OSError is re-raised as CheckpointWriteError naming the path and the free space left,
instead of torch's "unexpected pos ..." from deep inside the zip writer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written or published; `latest` still names the previous one."""


def write_text_durably(path: Path, text: str) -> None:
    """Write to a temporary name, fsync, rename: readers see the old content or the new, never a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    with explain_os_errors(path):
        with open(tmp, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def save_durably(obj: Any, path: Path, zip_crc32: bool = False) -> None:
    """torch.save, then fsync: the file is on disk before anything says it is."""
    with explain_os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with crc32_setting(zip_crc32):
            torch.save(obj, path)
        fsync_path(path)


def fsync_path(path: str | Path) -> None:
    """Flushes a file (or directory) another writer has closed."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_directory(tmp: Path, final: Path, latest_file: Path) -> None:
    """Atomic switch: rename the finished directory into place, then point `latest_file` at it. A directory
    already at `final` (the same step saved again) is exchanged with the new one in one step where the system
    can (Linux renameat2), and deleted only once the new one is in place."""
    with explain_os_errors(final):
        if not final.exists():
            tmp.rename(final)
        elif _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
        else:  # no atomic exchange: the old one steps aside first, and is deleted only after the rename
            old = final.with_name(f".old.{final.name}")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        fsync_path(final.parent)
        write_text_durably(latest_file, final.name)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (renameat2 with RENAME_EXCHANGE); False where the system cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def explain_os_errors(path: Path) -> Iterator[None]:
    """Re-raises an OSError (or the RuntimeError torch.save makes of one) as a CheckpointWriteError that names
    the path and, for a full disk, the space left and what to do."""
    try:
        yield
    except CheckpointWriteError:
        raise
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _looks_like_a_write_failure(e):
            raise
        if _disk_full(e, path):
            raise CheckpointWriteError(
                f"no space left on the device holding {path} ({_free_space(path)} free): free some space or point "
                f"checkpoint.dir at a larger file system (checkpoint.keep_last limits how many are kept)") from e
        raise CheckpointWriteError(f"could not write {path}: {e}") from e


LOW_SPACE = 256 * 2 ** 20
"""Below this much free space, a failed torch.save write is taken for a full disk (see _disk_full)."""


def _disk_full(error: BaseException, path: Path) -> bool:
    """ENOSPC / EDQUOT anywhere in the chain; or torch's zip writer, which reports a failed write as
    "unexpected pos N vs M" without the errno, failing on a device with next to no space left."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(error):
            return True
        if "unexpected pos" in str(error):
            return _free_bytes(path) < LOW_SPACE
        error = error.__cause__ or error.__context__
    return False


def _looks_like_a_write_failure(error: RuntimeError) -> bool:
    text = str(error)
    return any(s in text for s in ("unexpected pos", "PytorchStreamWriter", "No space left", "file write failed"))


def _free_bytes(path: Path) -> float:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return float("inf")


def _free_space(path: Path) -> str:
    free = _free_bytes(path)
    return "unknown" if free == float("inf") else f"{free / 2 ** 30:.2f} GiB"


@contextlib.contextmanager
def crc32_setting(enabled: bool) -> Iterator[None]:
    """Whether torch.save computes its per-record CRC32 inside (torch >= 2.6; the setting is process-wide in
    torch and restored on exit; a save on another thread meanwhile only differs in whether it computes it)."""
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
