"""A failed checkpoint write says what happened: a full disk by name and free space, not torch's zip-writer text."""

import errno

import pytest

from megabert.checkpoint import durable
from megabert.checkpoint.durable import CheckpointWriteError, explain_os_errors


def _raise(error):
    with explain_os_errors(durable.Path("/tmp/ckpt/step_0000004/ds/x.pt")):
        raise error


def test_enospc_is_named_a_full_disk_with_the_path_and_the_fix():
    with pytest.raises(CheckpointWriteError, match=r"no space left on the device holding /tmp/ckpt/step_0000004.*"
                                                   r"GiB free.*checkpoint.keep_last"):
        _raise(OSError(errno.ENOSPC, "No space left on device"))


@pytest.mark.parametrize("free, expected", [(10 * 2 ** 20, "no space left"), (500 * 2 ** 30, "could not write")])
def test_torchs_unexpected_pos_is_a_full_disk_only_when_the_device_is_nearly_full(monkeypatch, free, expected):
    monkeypatch.setattr(durable, "_free_bytes", lambda path: free)
    with pytest.raises(CheckpointWriteError, match=expected):
        _raise(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4480 vs 4374"))


def test_other_runtime_errors_pass_through_unchanged():
    with pytest.raises(RuntimeError, match="^something else$"):
        _raise(RuntimeError("something else"))
