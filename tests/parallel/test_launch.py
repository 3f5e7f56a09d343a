"""The test harness's process launcher: a native abort outside Python is run again once, a Python error is not."""

import os

import pytest

from tests.parallel.launch import run_on_processes


def abort_once_worker(rank: int, world_size: int, marker: str) -> int:
    if rank == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os.abort()  # SIGABRT with no Python traceback, as a native crash
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
