"""Which checkpoint a run resumes from, whatever state a crash left the directory in (no processes needed)."""

from pathlib import Path

import pytest

from megabert.config import CheckpointConfig
from megabert.checkpoint.manager import STATE_FILE, latest_checkpoint, list_checkpoints, resolve_resume


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


def test_publishing_a_step_again_swaps_the_new_directory_in_before_the_old_one_goes(tmp_path, monkeypatch):
    from megabert.checkpoint import durable

    for atomic in (True, False):  # renameat2's exchange, and the fallback where the system has none
        root = tmp_path / f"atomic_{atomic}"
        final, tmp = root / "step_0000005", root / ".tmp.step_0000005"
        final.mkdir(parents=True)
        (final / STATE_FILE).write_text("old")
        tmp.mkdir()
        (tmp / STATE_FILE).write_text("new")
        seen = []
        real_rmtree = durable.shutil.rmtree

        def rmtree_watching(path, *args, **kwargs):  # whenever anything is deleted, the new state is in place
            if Path(path).exists():
                seen.append((final / STATE_FILE).read_text() if (final / STATE_FILE).is_file() else None)
            real_rmtree(path, *args, **kwargs)

        monkeypatch.setattr(durable.shutil, "rmtree", rmtree_watching)
        if not atomic:
            monkeypatch.setattr(durable, "_exchange", lambda a, b: False)
        durable.publish_directory(tmp, final, root / "latest")
        monkeypatch.undo()
        assert (final / STATE_FILE).read_text() == "new" and not tmp.exists()
        assert seen and all(state == "new" for state in seen)
        assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000005"]
