"""The test harness's process launcher: a native abort before every rank saved its result is run again once, one
after it keeps the results, and a Python error is never run again."""

import atexit
import os

import pytest

from tests.parallel.launch import run_on_processes


def abort_once_worker(rank: int, world_size: int, marker: str) -> int:
    if rank == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os.abort()  # SIGABRT with no Python traceback, as a native crash
    return rank


def abort_at_exit_worker(rank: int, world_size: int, marker: str) -> int:
    open(marker, "a").write("x")
    if rank == 0:
        atexit.register(os.abort)  # SIGABRT at interpreter exit, after the result is saved
    return rank


def python_error_worker(rank: int, world_size: int, marker: str) -> int:
    open(marker, "a").write("x")
    raise ValueError("boom")


@pytest.mark.slow
def test_a_native_abort_is_run_again_once_and_a_python_error_is_not(tmp_path):
    with pytest.warns(UserWarning, match="killed by SIGABRT outside Python"):
        assert run_on_processes(abort_once_worker, 2, str(tmp_path / "aborted")) == [0, 1]
    with pytest.raises(RuntimeError, match="ValueError: boom"):
        run_on_processes(python_error_worker, 2, str(tmp_path / "ran"))
    assert 1 <= len((tmp_path / "ran").read_text()) <= 2  # each rank at most once: no second attempt


@pytest.mark.slow
def test_a_native_abort_at_exit_after_every_result_was_saved_keeps_the_results(tmp_path):
    with pytest.warns(UserWarning, match="after every rank had saved its result"):
        assert run_on_processes(abort_at_exit_worker, 2, str(tmp_path / "ran")) == [0, 1]
    assert len((tmp_path / "ran").read_text()) == 2  # one attempt: not run again
