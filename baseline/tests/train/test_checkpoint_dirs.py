"""Which checkpoint a run resumes from, whatever state a crash left the directory in (no processes needed)."""

import pytest

from megabert.config import CheckpointConfig
from megabert.train.checkpoint import STATE_FILE, latest_checkpoint, list_checkpoints, resolve_resume


def make(root, name, complete=True):
    path = root / name
    path.mkdir(parents=True)
    if complete:
        (path / STATE_FILE).write_text("{}")
    return path


def test_latest_follows_the_pointer_and_ignores_unfinished_saves(tmp_path):
    make(tmp_path, "step_0000010")
    good = make(tmp_path, "step_0000020")
    make(tmp_path, ".tmp.step_0000030")  # killed while writing
    (tmp_path / "latest").write_text("step_0000020\n")
    assert latest_checkpoint(tmp_path) == good
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000010", "step_0000020"]


def test_a_crash_between_rename_and_pointer_update_still_resumes_from_the_newest(tmp_path):
    make(tmp_path, "step_0000010")
    newest = make(tmp_path, "step_0000020")
    (tmp_path / "latest").write_text("step_0000010\n")
    assert latest_checkpoint(tmp_path) == newest


def test_steps_sort_numerically_and_incomplete_directories_are_skipped(tmp_path):
    make(tmp_path, "step_0000900")
    make(tmp_path, "step_0001000", complete=False)
    assert latest_checkpoint(tmp_path).name == "step_0000900"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_resume_modes(tmp_path):
    ckpt = make(tmp_path, "step_0000005")
    assert resolve_resume(CheckpointConfig(dir=str(tmp_path), resume="auto")) == ckpt
    assert resolve_resume(CheckpointConfig(dir=str(tmp_path / "fresh"), resume="auto")) is None
    assert resolve_resume(CheckpointConfig(dir=str(tmp_path), resume="none")) is None
    assert resolve_resume(CheckpointConfig(resume=str(ckpt))) == ckpt
    assert resolve_resume(CheckpointConfig(resume=str(tmp_path))) == ckpt
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        resolve_resume(CheckpointConfig(resume=str(tmp_path / "fresh")))
