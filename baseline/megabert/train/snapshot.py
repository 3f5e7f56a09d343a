"""A private host copy of training state, taken in one blocking moment so the files can be written later.

DeepSpeed's `engine.save_checkpoint` hands every state dict it builds (model, ZeRO partition, schedule ...) to
`engine.checkpoint_engine.save(state_dict, path)`. `RecordingCheckpointEngine` stands in for that engine during the
call: instead of writing, it records `(path, host_copy(state_dict))`. The copy must be private, because training
resumes the moment save_checkpoint returns and keeps mutating the live objects: the tensors (in place), the
optimizer's param_groups (lr, step), the schedule's counters. So every tensor becomes a compact host tensor of its
own, every container is rebuilt, and any other mutable leaf is deep-copied; only immutable leaves are shared.

`HostStaging` keeps the pinned host buffers that device tensors are copied into. They are reused by the next
snapshot (the caller guarantees the previous write has finished), so only the first save pays for pinning, and the
device-to-host copies run asynchronously with one synchronisation at the end. In the trainer on an H200 a
megabert-base save (1.9 GB, ZeRO-2 bf16) stopped training for 0.04 s, against 3.4-4.0 s for DeepSpeed's own
torch.save of the device tensors (runs 6-7); pinning the buffers once took 1.5-1.8 s (docs/BENCHMARKS.md, runs 9-11).
"""

from __future__ import annotations

import copy
import enum
import os
from typing import Any, Optional

import numpy as np
import torch

_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, range, torch.dtype, torch.device, torch.Size,
              torch.memory_format, torch.layout, enum.Enum, type(Ellipsis))


class HostStaging:
    """Pinned host buffers for device tensors, handed out in the same order at every snapshot and reused when the
    shape and dtype match (the state of one run has the same structure at every save)."""

    def __init__(self, pin_memory: bool = True) -> None:
        self.pin_memory = pin_memory
        self._buffers: list[torch.Tensor] = []
        self._next = 0

    def start(self) -> None:
        self._next = 0

    def buffer(self, like: torch.Tensor) -> torch.Tensor:
        i, self._next = self._next, self._next + 1
        if i < len(self._buffers):
            held = self._buffers[i]
            if held.shape == like.shape and held.dtype == like.dtype:
                return held
        fresh = torch.empty(like.shape, dtype=like.dtype, pin_memory=self.pin_memory)
        if i < len(self._buffers):
            self._buffers[i] = fresh
        else:
            self._buffers.append(fresh)
        return fresh

    def release(self) -> None:
        del self._buffers[self._next:]  # left over from a larger earlier state

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers)


class Snapshot:
    """One snapshot: `copy` state trees (any number), then `finish` once before handing them to another thread.

    The same tensor view met twice (tied weights) becomes one host tensor, so a written file shares it as
    torch.save of the live state would. The sources stay referenced until `finish`, so a temporary freed between
    two copies cannot hand its address to another tensor and alias it.
    """

    def __init__(self, staging: Optional[HostStaging] = None):
        self.staging = staging
        if staging is not None:
            staging.start()
        self._tensors: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._device_copies = False

    def copy(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj)
        if isinstance(obj, _IMMUTABLE):
            return obj
        if isinstance(obj, dict):
            out = copy.copy(obj)  # keeps the type (OrderedDict, defaultdict's factory); then fresh values
            for key, value in obj.items():
                out[key] = self.copy(value)
            return out
        if isinstance(obj, list):
            out = copy.copy(obj)
            out[:] = [self.copy(v) for v in obj]
            return out
        if isinstance(obj, tuple):
            items = [self.copy(v) for v in obj]
            return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)  # namedtuple or tuple
        if isinstance(obj, (set, frozenset)):
            return type(obj)(obj)  # elements are hashable, hence treated as immutable
        if isinstance(obj, np.ndarray):
            return obj.copy()
        return copy.deepcopy(obj)  # a loss scaler, a config object ...: small, and private afterwards

    def finish(self) -> None:
        """Waits for the device-to-host copies; after this the copies are complete and independent."""
        if self._device_copies:
            torch.cuda.synchronize()
        if self.staging is not None:
            self.staging.release()
        self._tensors.clear()

    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if t.layout != torch.strided:  # sparse and other layouts: no storage to share or stage
            return t.to("cpu", copy=True)
        key = (t.device, t.dtype, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        found = self._tensors.get(key)
        if found is not None:
            return found[1]
        if t.device.type == "cpu":
            # A new contiguous tensor holding exactly these elements: a view of a flat buffer does not drag the
            # whole buffer into the file (torch.save writes a view's entire storage).
            host = t.clone(memory_format=torch.contiguous_format)
        elif self.staging is not None and t.device.type == "cuda":
            host = self.staging.buffer(t)
            host.copy_(t, non_blocking=True)
            self._device_copies = True
        else:
            host = t.to("cpu", copy=True, memory_format=torch.contiguous_format)
        self._tensors[key] = (t, host)
        return host


def host_copy(obj: Any, staging: Optional[HostStaging] = None) -> Any:
    """A private copy of `obj` whose tensors all live in host memory (compact, detached); see the module doc."""
    snapshot = Snapshot(staging)
    out = snapshot.copy(obj)
    snapshot.finish()
    return out


class RecordingCheckpointEngine:
    """DeepSpeed checkpoint-engine interface (create / makedirs / save / commit) that records host copies of the
    state dicts instead of writing them; directories are still made, so DeepSpeed's own small side files land."""

    def __init__(self, snapshot: Snapshot):
        self.name = "RecordingCheckpointEngine"
        self.snapshot = snapshot
        self.recorded: list[tuple[str, Any]] = []

    def create(self, info) -> None:
        pass

    def makedirs(self, path, exist_ok: bool = False) -> None:
        os.makedirs(path, exist_ok=exist_ok)

    def save(self, state_dict, path: str) -> None:
        self.recorded.append((str(path), self.snapshot.copy(state_dict)))

    def load(self, path: str, map_location=None):
        raise RuntimeError("the recording checkpoint engine only records saves")

    def commit(self, info) -> bool:
        return True

    def is_data_parallel_writer(self, dp_rank: int) -> bool:
        return dp_rank == 0

    def is_decoupled(self) -> bool:
        return False

    def preserves_storage_sharing(self) -> bool:
        return True

    def cleanup(self) -> None:
        pass
