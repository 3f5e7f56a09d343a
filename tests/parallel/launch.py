"""Run a function on N local CPU processes over gloo and collect what each returns (tests only)."""

from __future__ import annotations

import faulthandler
import os
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world_size: int, init_file: str, out_dir: str, fn: Callable, args: tuple) -> None:
    faulthandler.enable()  # a native abort prints every thread's Python stack into the captured stderr
    torch.set_num_threads(1)  # 2 shared cores: one thread per process keeps the runs from thrashing
    # what torchrun would export (DeepSpeed reads them)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        path = Path(out_dir) / f"rank{rank}.pt"
        torch.save(result, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)  # whole or absent, even if this rank is killed while saving
    except Exception:
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_on_processes(fn: Callable, world_size: int, *args: Any) -> list[Any]:
    """fn(rank, world_size, *args) on `world_size` spawned processes; returns their results, rank order.

    `fn` must be importable (defined at module level). A failure on any rank raises with that rank's traceback; a
    Python error is never run again. A rank killed by a signal with no Python traceback is a native abort: on this
    2-core machine a two-process DeepSpeed run now and then dies with "terminate called without an active exception"
    after its Python code has finished (faulthandler shows no Python frame), in a thread some library leaves
    running at exit. When every rank had already saved its result, the results stand, with a warning; otherwise fn
    runs again once, with a warning.
    """
    for attempt in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            init_file = os.path.join(tmp, "init")
            try:
                mp.spawn(_entry, args=(world_size, init_file, tmp, fn, args), nprocs=world_size, join=True)
            except mp.ProcessExitedException as e:
                errors = _rank_errors(tmp)
                if errors or e.signal_name is None:
                    raise RuntimeError(f"a rank failed:\n{errors or e}") from None
                if all((Path(tmp) / f"rank{r}.pt").exists() for r in range(world_size)):
                    warnings.warn(f"rank {e.error_index} was killed by {e.signal_name} outside Python after every "
                                  f"rank had saved its result; the results stand")
                    return _results(tmp, world_size)
                if attempt == 2:
                    raise RuntimeError(f"a rank failed twice:\n{e}") from None
                warnings.warn(f"rank {e.error_index} was killed by {e.signal_name} outside Python; running again")
                continue
            except Exception as e:
                raise RuntimeError(f"a rank failed:\n{_rank_errors(tmp) or e}") from None
            return _results(tmp, world_size)
    raise AssertionError("unreachable")


def _results(tmp: str, world_size: int) -> list[Any]:
    return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _rank_errors(tmp: str) -> str:
    """The Python tracebacks the ranks wrote before dying ("" when none did)."""
    return "\n".join(p.read_text() for p in sorted(Path(tmp).glob("rank*.err")))
