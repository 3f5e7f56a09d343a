"""Asynchronous checkpoints: what is written is the state at save time, nothing is published before every rank has
written its files, and a failed write is never silent. The fast tests drive CheckpointManager with a miniature of
DeepSpeed's save contract (state dicts handed to engine.checkpoint_engine.save); the slow one runs the trainer on
two gloo processes."""

import json
import os
import random
import threading
import time

import pytest
import torch

from megabert.config import CheckpointConfig, ConfigError
from megabert.train.checkpoint import (CheckpointManager, CheckpointWriteError, latest_checkpoint, list_checkpoints,
                                       resolve_resume)
from tests.train.launch import explain, losses, run_trainer, tiny_config


def torch_checkpoint_engine_class():
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    return TorchCheckpointEngine


def hold_writes(mgr: CheckpointManager, gate: threading.Event | None = None, fail: Exception | None = None):
    """Makes mgr's background writer wait for `gate` before each file (the write held back), or raise `fail`."""
    write = mgr._write_file

    def held(obj, path):
        if fail is not None:
            raise fail
        assert gate.wait(30), "test gate never opened"
        write(obj, path)

    mgr._write_file = held


def release_writes(mgr: CheckpointManager) -> None:
    del mgr._write_file


class MiniEngine:
    """DeepSpeed's checkpoint contract in miniature: parameters are views of one flat buffer, the optimizer has
    param_groups and per-parameter state; save_checkpoint hands its state dicts to self.checkpoint_engine."""

    def __init__(self, rank: int = 0):
        self.rank = rank
        self.flat = torch.arange(40.0)
        self.weight = self.flat[:10]
        self.optimizer = {"param_groups": [{"lr": 0.1, "params": [0]}],
                          "state": {0: {"exp_avg": torch.zeros(10), "step": torch.tensor(0.0)}}}
        self.checkpoint_engine = torch_checkpoint_engine_class()()

    def train_step(self) -> None:
        self.weight.add_(1.0)
        self.optimizer["state"][0]["exp_avg"].add_(0.5)
        self.optimizer["state"][0]["step"] += 1
        self.optimizer["param_groups"][0]["lr"] *= 0.5
        random.random()

    def state(self) -> dict:
        return {"weight": self.weight.clone(), "lr": self.optimizer["param_groups"][0]["lr"],
                "exp_avg": self.optimizer["state"][0]["exp_avg"].clone(),
                "step": self.optimizer["state"][0]["step"].item()}

    def save_checkpoint(self, save_dir, tag, save_latest=False):
        folder = f"{save_dir}/{tag}"
        self.checkpoint_engine.makedirs(folder, exist_ok=True)
        if self.rank == 0:
            self.checkpoint_engine.save({"module": {"weight": self.weight, "decoder.weight": self.weight}},
                                        f"{folder}/model_states.pt")
        self.checkpoint_engine.save({"optimizer": self.optimizer}, f"{folder}/optim_rank_{self.rank}.pt")

    def load_checkpoint(self, load_dir, tag, **kwargs):
        folder = f"{load_dir}/{tag}"
        module = torch.load(f"{folder}/model_states.pt", weights_only=False)["module"]
        self.weight.copy_(module["weight"])
        self.optimizer = torch.load(f"{folder}/optim_rank_{self.rank}.pt", weights_only=False)["optimizer"]
        return folder, {}


def manager(tmp_path, rank=0, world_size=1, **cfg) -> CheckpointManager:
    return CheckpointManager(CheckpointConfig(dir=str(tmp_path / "ckpt"), keep_last=2, **cfg), rank, world_size)


def save(mgr, engine, step):
    return mgr.save(engine, step, {"step": step, "consumed_samples": 16 * step}, {"seed": 1})


def test_the_checkpoint_holds_the_state_at_save_time_while_training_goes_on(tmp_path):
    gate = threading.Event()
    engine, mgr = MiniEngine(), manager(tmp_path)
    engine.train_step()
    save(mgr, engine, 1)
    assert mgr.wait().name == "step_0000001"

    engine.train_step()
    at_save, rng_at_save = engine.state(), random.getstate()
    hold_writes(mgr, gate)
    save(mgr, engine, 2)
    assert mgr.in_flight
    for _ in range(3):  # training goes on while the files are not yet written
        engine.train_step()
    after = engine.state()
    # Meanwhile a resume sees the previous checkpoint, never the half-written one.
    ckpt = tmp_path / "ckpt"
    assert (ckpt / ".tmp.step_0000002").is_dir() and not (ckpt / "step_0000002").exists()
    assert latest_checkpoint(ckpt).name == "step_0000001"
    assert resolve_resume(CheckpointConfig(dir=str(ckpt))).name == "step_0000001"

    gate.set()
    published = mgr.wait()
    assert published == ckpt / "step_0000002" and latest_checkpoint(ckpt) == published
    assert not (published / "written").exists() and not mgr.in_flight
    assert json.loads((published / "trainer_state.json").read_text())["consumed_samples"] == 32

    restored = MiniEngine()
    mgr.load(restored, published)
    got = restored.state()
    assert torch.equal(got["weight"], at_save["weight"]) and not torch.equal(got["weight"], after["weight"])
    assert got["lr"] == at_save["lr"] and got["step"] == at_save["step"] == 2.0
    assert torch.equal(got["exp_avg"], at_save["exp_avg"])
    assert random.getstate() == rng_at_save  # load restored this rank's RNG as it was at save time
    module = torch.load(published / "ds" / "model_states.pt", weights_only=False)["module"]
    assert module["weight"].untyped_storage().nbytes() == 10 * 4  # not the 40-element flat buffer
    assert module["weight"].data_ptr() == module["decoder.weight"].data_ptr()  # tied weights stay tied


@pytest.mark.parametrize("surfaces_at", ["wait", "next save"])
def test_a_failed_background_write_raises_naming_the_checkpoint_and_latest_keeps_the_previous(tmp_path,
                                                                                              surfaces_at):
    engine, mgr = MiniEngine(), manager(tmp_path)
    save(mgr, engine, 1)
    mgr.wait()
    hold_writes(mgr, fail=OSError(28, "No space left on device"))
    save(mgr, engine, 2)  # returns: the failure happens in the background
    with pytest.raises(CheckpointWriteError, match=r"step_0000002.*No space left.*latest. still names step_0000001"):
        mgr.wait() if surfaces_at == "wait" else save(mgr, engine, 3)
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "latest").read_text().strip() == "step_0000001"
    assert [p.name for p in list_checkpoints(ckpt)] == ["step_0000001"]
    assert mgr.wait() is None  # reported once

    release_writes(mgr)  # the disk has room again
    save(mgr, engine, 4)
    assert mgr.wait().name == "step_0000004"
    assert not (ckpt / ".tmp.step_0000002").exists()  # the failed attempt is cleaned up


def test_rank_0_publishes_only_when_every_rank_has_written_its_files(tmp_path):
    """Two ranks in one process (no process group): rank 1's write is held back; rank 0 must wait for it."""
    gate = threading.Event()
    ranks = [(manager(tmp_path, 0, 2), MiniEngine(0)), (manager(tmp_path, 1, 2), MiniEngine(1))]
    hold_writes(ranks[1][0], gate)
    for mgr, engine in ranks:
        save(mgr, engine, 3)
    published = tmp_path / "ckpt" / "step_0000003"
    rank_0_done = tmp_path / "ckpt" / ".tmp.step_0000003" / "written" / "rank_00000"
    deadline = time.time() + 10
    while not (rank_0_done.exists() or published.exists()):
        assert time.time() < deadline, "rank 0 never finished its own files"
        time.sleep(0.01)
    time.sleep(0.3)  # rank 0's writer is now polling for rank 1's marker
    assert not published.exists() and latest_checkpoint(tmp_path / "ckpt") is None, "published without rank 1"

    gate.set()
    assert ranks[1][0].wait() == ranks[0][0].wait() == published
    assert sorted(p.name for p in (published / "ds").iterdir()) == ["model_states.pt", "optim_rank_0.pt",
                                                                   "optim_rank_1.pt"]
    assert sorted(p.name for p in (published / "rng").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]


def test_rank_0_does_not_publish_when_another_rank_fails(tmp_path):
    ranks = [(manager(tmp_path, 0, 2), MiniEngine(0)), (manager(tmp_path, 1, 2), MiniEngine(1))]
    hold_writes(ranks[1][0], fail=PermissionError("read-only file system"))
    for mgr, engine in ranks:
        save(mgr, engine, 3)
    with pytest.raises(CheckpointWriteError, match="read-only"):
        ranks[1][0].wait()
    with pytest.raises(CheckpointWriteError, match=r"step_0000003.*rank_00001 failed to write"):
        ranks[0][0].wait()  # learnt from rank 1's failure marker, without any collective
    assert list_checkpoints(tmp_path / "ckpt") == []


class OtherCheckpointEngine:
    """Not torch.save underneath (as DeepSpeed's decoupled or NVMe writers): an async save cannot record it."""

    def makedirs(self, path, exist_ok=False):
        os.makedirs(path, exist_ok=exist_ok)

    def save(self, state_dict, path):
        torch.save(state_dict, path)


@pytest.mark.parametrize("why", ["async_save false", "another checkpoint engine"])
def test_synchronous_saves_publish_before_save_returns(tmp_path, why):
    engine, mgr = MiniEngine(), manager(tmp_path, async_save=why != "async_save false")
    if why == "another checkpoint engine":
        engine.checkpoint_engine = OtherCheckpointEngine()
    engine.train_step()
    at_save = engine.state()
    save(mgr, engine, 1)
    assert not mgr.in_flight and latest_checkpoint(tmp_path / "ckpt").name == "step_0000001"
    assert mgr.wait() is None
    restored = MiniEngine()
    mgr.load(restored, tmp_path / "ckpt" / "step_0000001")
    assert torch.equal(restored.state()["weight"], at_save["weight"])


def test_after_an_exception_close_gives_up_on_an_unfinished_save_without_publishing_it(tmp_path):
    gate = threading.Event()
    engine, mgr = MiniEngine(), manager(tmp_path)
    save(mgr, engine, 1)
    mgr.wait()
    hold_writes(mgr, gate)
    save(mgr, engine, 2)
    job = mgr._pending
    mgr.close(timeout_s=0.2)  # the run is failing: nothing waits for long, no collective
    assert not mgr.in_flight
    gate.set()  # the write finishes after all (a process that goes on living) ...
    job.thread.join(10)
    ckpt = tmp_path / "ckpt"
    assert [p.name for p in list_checkpoints(ckpt)] == ["step_0000001"]  # ... but is not published
    assert latest_checkpoint(ckpt).name == "step_0000001"


def test_async_save_must_be_a_boolean():
    with pytest.raises(ConfigError, match="checkpoint.async_save"):
        CheckpointConfig(async_save="sometimes").validate()


@pytest.mark.slow
def test_two_ranks_write_in_the_background_publish_when_both_are_done_and_resume_exactly(tmp_path):
    """ZeRO-1 on two gloo processes. Both writers start late (rank 1 later), so training runs on and mutates the
    live parameters and optimizer partitions before the files are written: a resume from the step-4 checkpoint
    reproduces the losses only if the snapshot was private, and only if rank 0 waited for rank 1's files."""
    first = tiny_config(tmp_path / "first")
    first["schedule"]["total_steps"] = 8
    proc = run_trainer(first, tmp_path, nproc=2, env={"MEGABERT_TEST_WRITE_DELAY": "0:1.5,1:3"})
    assert proc.returncode == 0, explain(proc)
    log = proc.stderr
    published_4 = log.index("published checkpoint " + str(tmp_path / "first" / "ckpt" / "step_0000004"))
    assert log.index("step 6 |") < published_4, "training did not go on while step 4 was being written"
    ckpt = tmp_path / "first" / "ckpt"
    assert [p.name for p in list_checkpoints(ckpt)] == ["step_0000004", "step_0000008"]
    assert not list(ckpt.glob(".tmp.*")) and (ckpt / "latest").read_text().strip() == "step_0000008"
    for step_dir in list_checkpoints(ckpt):
        assert sorted(p.name for p in (step_dir / "rng").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]
        assert len(list((step_dir / "ds").glob("*optim_states.pt"))) == 2 and not (step_dir / "written").exists()

    resumed = tiny_config(tmp_path / "resumed")
    resumed["schedule"]["total_steps"] = 8
    resumed["checkpoint"]["resume"] = str(ckpt / "step_0000004")
    proc = run_trainer(resumed, tmp_path, nproc=2)
    assert proc.returncode == 0, explain(proc)
    reference, again = losses(tmp_path / "first"), losses(tmp_path / "resumed")
    assert sorted(again) == [5, 6, 7, 8]
    for step in again:
        assert again[step] == reference[step], f"step {step}: {again[step]} != {reference[step]}"


@pytest.mark.parametrize("crc32", [False, True])
def test_zip_crc32_decides_whether_checkpoint_files_carry_checksums_and_both_resume(tmp_path, crc32):
    import zipfile

    from torch.utils.serialization import config as serialization

    engine, mgr = MiniEngine(), manager(tmp_path, zip_crc32=crc32)
    engine.train_step()
    before = engine.state()
    save(mgr, engine, 1)
    published = mgr.wait()
    assert serialization.save.compute_crc32  # torch's process-wide default is back
    with zipfile.ZipFile(published / "ds" / "optim_rank_0.pt") as archive:
        bad = archive.testzip()  # the first record whose stored CRC does not match its bytes
    assert (bad is None) == crc32
    restored = MiniEngine()
    mgr.load(restored, published)
    assert torch.equal(restored.state()["exp_avg"], before["exp_avg"])


def test_zip_crc32_must_be_a_boolean():
    with pytest.raises(ConfigError, match="zip_crc32"):
        CheckpointConfig(zip_crc32="no").validate()


def test_wait_returns_once_published_and_old_checkpoints_are_deleted_before_the_next_save_or_close(tmp_path):
    """Deleting the checkpoints beyond keep_last happens after wait() returns (the end of a run need not wait for
    it), but never overlaps the next save and is finished when close() returns."""
    engine, mgr = MiniEngine(), manager(tmp_path)  # keep_last 2
    for step in (1, 2):
        save(mgr, engine, step)
        mgr.wait()
    gate, pruning = threading.Event(), threading.Event()
    prune = mgr._prune

    def held_prune():
        pruning.set()
        assert gate.wait(30), "test gate never opened"
        prune()

    mgr._prune = held_prune
    save(mgr, engine, 3)
    ckpt = tmp_path / "ckpt"
    assert mgr.wait() == ckpt / "step_0000003"  # returns while the pruning is held back
    assert pruning.wait(30) and [p.name for p in list_checkpoints(ckpt)] == ["step_0000001", "step_0000002",
                                                                           "step_0000003"]
    threading.Timer(0.2, gate.set).start()
    save(mgr, engine, 4)  # waits for the pruning first
    assert gate.is_set() and not (ckpt / "step_0000001").exists()
    gate.clear()
    pruning.clear()
    mgr.wait()
    assert pruning.wait(30)
    threading.Timer(0.2, gate.set).start()
    mgr.close()
    assert gate.is_set() and [p.name for p in list_checkpoints(ckpt)] == ["step_0000003", "step_0000004"]
