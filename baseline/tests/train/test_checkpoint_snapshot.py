"""host_copy: a private, compact host copy of a state tree (what an asynchronous save writes later)."""

import collections
import pickle

import numpy as np
import torch

from megabert.train.snapshot import HostStaging, host_copy


class LossScaler:  # stands in for the small mutable objects DeepSpeed puts in its state dicts
    def __init__(self):
        self.scale = 1.0


def test_copy_is_independent_of_everything_the_optimizer_mutates_later():
    exp_avg = torch.zeros(4)
    groups = [{"lr": 0.1, "betas": (0.9, 0.98), "params": [0, 1]}]
    live = collections.OrderedDict(state={0: {"exp_avg": exp_avg, "step": torch.tensor(3.0)}}, param_groups=groups,
                                   scaler=LossScaler(), counts=collections.defaultdict(int, a=1),
                                   shard=np.arange(3), names={"x", "y"})
    copy = host_copy(live)

    exp_avg.add_(1.0)
    live["state"][0]["step"] += 1
    groups[0]["lr"] = 0.05
    groups[0]["params"].append(2)
    live["scaler"].scale = 2.0
    live["counts"]["a"] += 1
    live["shard"][0] = 7

    assert type(copy) is collections.OrderedDict and type(copy["counts"]) is collections.defaultdict
    assert torch.equal(copy["state"][0]["exp_avg"], torch.zeros(4)) and copy["state"][0]["step"].item() == 3.0
    assert copy["param_groups"] == [{"lr": 0.1, "betas": (0.9, 0.98), "params": [0, 1]}]
    assert copy["scaler"].scale == 1.0 and copy["counts"]["a"] == 1 and copy["shard"].tolist() == [0, 1, 2]
    assert copy["names"] == {"x", "y"}
    pickle.dumps(copy)  # still serialisable as torch.save needs


def test_a_view_of_a_flat_buffer_is_copied_compactly_and_tied_views_stay_tied(tmp_path):
    flat = torch.arange(100_000.0)  # DeepSpeed keeps parameters as views of flat buffers
    weight = flat[10:20].view(2, 5)
    state = {"embedding": weight, "decoder": flat[10:20].view(2, 5), "other": flat[20:30]}
    copy = host_copy(state)

    assert copy["embedding"].untyped_storage().nbytes() == 10 * 4
    assert copy["embedding"] is copy["decoder"]  # the same view once, as torch.save would share it
    assert copy["other"].data_ptr() != copy["embedding"].data_ptr()
    torch.save(copy, tmp_path / "s.pt")
    assert (tmp_path / "s.pt").stat().st_size < 10_000  # not the 400 kB buffer
    loaded = torch.load(tmp_path / "s.pt")
    assert torch.equal(loaded["embedding"], weight) and loaded["decoder"].data_ptr() == loaded["embedding"].data_ptr()


def test_parameters_are_detached_and_keep_their_values():
    param = torch.nn.Parameter(torch.randn(3, 3))
    copy = host_copy({"w": param})["w"]
    assert not copy.requires_grad and type(copy) is torch.Tensor and torch.equal(copy, param.detach())


def test_staging_hands_out_the_same_buffers_when_the_structure_repeats():
    staging = HostStaging(pin_memory=torch.cuda.is_available())
    staging.start()
    matrix = staging.buffer(torch.empty(3, 4))
    staging.buffer(torch.empty(2, dtype=torch.bfloat16))
    staging.start()  # the next snapshot
    assert staging.buffer(torch.empty(3, 4)) is matrix
    grown = staging.buffer(torch.empty(5))
    assert grown.shape == (5,) and grown.dtype == torch.float32
    staging.release()
    assert staging.nbytes == 12 * 4 + 5 * 4


def test_sparse_tensors_are_copied_too():
    sparse = torch.eye(3).to_sparse()
    copy = host_copy({"s": sparse})["s"]
    sparse.values().mul_(5.0)
    assert torch.equal(copy.to_dense(), torch.eye(3))
