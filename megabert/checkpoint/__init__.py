"""Saving and loading training state, and turning it into model directories.

    manager.py          checkpoint directories, `latest`, resume, pruning: CheckpointManager
    writer.py           the background write of an asynchronous save and its cross-rank publish protocol
    durable.py          fsync/rename writes, atomic publishing, clear errors for a full disk
    snapshot.py         the private host copy an asynchronous save writes later
    export.py           a training checkpoint -> a model directory (python -m megabert.checkpoint.export)
    tensor_parallel.py  tensor-parallel state dicts and directories merged to one rank or split to N, exactly

Above parallel/ and model/ in the layering; used by train/ and the conversion tool.
"""

from megabert.checkpoint.durable import CheckpointWriteError
from megabert.checkpoint.manager import (CheckpointManager, latest_checkpoint, list_checkpoints, read_trainer_state,
                                         resolve_resume, step_dir_name)

__all__ = ["CheckpointManager", "CheckpointWriteError", "latest_checkpoint", "list_checkpoints",
           "read_trainer_state", "resolve_resume", "step_dir_name"]
