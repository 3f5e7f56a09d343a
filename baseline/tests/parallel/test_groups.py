"""Rank layout, size validation and the process-group object (one process; no spawning)."""

import pytest
import torch
import torch.distributed as dist

from megabert.config import ConfigError, ParallelConfig, TrainConfig
from megabert.model.bert import MosaicBertForMaskedLM
from megabert.parallel.groups import ParallelGroups, RankLayout, TensorParallelError, validate_tensor_parallel
from megabert.parallel.parallelize import parallelize_model
from tests.parallel.tiny import mlm_batch, tiny_config


def test_megatron_layout_keeps_tp_groups_contiguous():
    layout = RankLayout(world_size=8, tensor_parallel_size=4)
    assert layout.tensor_parallel_groups() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert layout.data_parallel_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.coordinates(6) == (2, 1)  # (tp_rank, dp_rank)
    assert RankLayout(4, 1).data_parallel_groups() == [[0, 1, 2, 3]]
    assert RankLayout(4, 4).data_parallel_groups() == [[0], [1], [2], [3]]


@pytest.mark.parametrize("field,overrides,tp", [
    ("model.num_heads", dict(num_heads=4, hidden_size=32), 3),
    ("model.vocab_size", dict(vocab_size=192, num_heads=128, hidden_size=128, intermediate_size=128), 128),
    ("model.intermediate_size", dict(intermediate_size=96, num_heads=64, hidden_size=64), 64),
])
def test_sizes_that_do_not_split_fail_naming_the_field(field, overrides, tp):
    with pytest.raises(TensorParallelError, match=field.replace(".", r"\.")):
        validate_tensor_parallel(tiny_config(**overrides), tp)


def test_world_size_must_be_a_multiple_of_tp():
    with pytest.raises(TensorParallelError, match=r"world size \(6\) is not divisible by tensor_parallel_size \(4\)"):
        validate_tensor_parallel(tiny_config(), 4, world_size=6)
    with pytest.raises(TensorParallelError, match="world size"):
        RankLayout(6, 4)


def test_tensor_parallel_errors_are_config_errors():
    assert issubclass(TensorParallelError, ConfigError)


def test_zero3_with_tensor_parallel_is_rejected_by_the_config():
    cfg = TrainConfig(parallel=ParallelConfig(tensor_parallel_size=2, zero_stage=3))
    cfg.model.num_heads = 12
    with pytest.raises(ConfigError, match="zero_stage 3 cannot be combined with tensor_parallel_size > 1"):
        cfg.validate()


@pytest.fixture
def single_process_world(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_groups_need_an_initialised_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="torch.distributed initialised first"):
        ParallelGroups(1)


def test_groups_answer_deepspeeds_mpu_queries_and_reset(single_process_world):
    groups = ParallelGroups(1, tiny_config())
    assert (groups.get_model_parallel_rank(), groups.get_model_parallel_world_size()) == (0, 1)
    assert (groups.get_tensor_model_parallel_rank(), groups.get_tensor_model_parallel_world_size()) == (0, 1)
    assert (groups.get_data_parallel_rank(), groups.get_data_parallel_world_size()) == (0, 1)
    assert groups.get_data_parallel_group_ranks() == [0]
    assert dist.get_world_size(groups.get_data_parallel_group()) == 1
    assert dist.get_world_size(groups.get_model_parallel_group()) == 1
    groups.check_zero_stage(3)  # fine without tensor parallelism
    groups.destroy()
    assert groups.tp_group is None
    again = ParallelGroups(1)  # a fresh object after a reset: no hidden state left behind
    assert again.get_data_parallel_world_size() == 1
    again.destroy()


def test_zero3_with_tensor_parallel_is_rejected_by_the_groups(single_process_world):
    groups = ParallelGroups(1)
    groups.tp_size = 2  # as on a TP = 2 rank
    with pytest.raises(TensorParallelError, match="ZeRO stage 3 cannot be combined"):
        groups.check_zero_stage(3)
    groups.check_zero_stage(2)
    groups.destroy()


def test_tp1_parallelized_model_matches_plain_model(single_process_world):
    """The TP code path with one rank: same outputs and grads as the plain model (what bench_tp_overhead times)."""
    groups = ParallelGroups(1)
    torch.manual_seed(0)
    plain = MosaicBertForMaskedLM(tiny_config())
    torch.manual_seed(0)
    tp = parallelize_model(MosaicBertForMaskedLM(tiny_config()), groups)
    batch = mlm_batch(plain.cfg, seed=3)
    out_plain, out_tp = plain(**batch), tp(**batch)
    out_plain.loss.backward()
    out_tp.loss.backward()
    torch.testing.assert_close(out_tp.logits, out_plain.logits, rtol=0, atol=0)
    torch.testing.assert_close(out_tp.loss, out_plain.loss, rtol=1e-6, atol=1e-6)
    grads_plain = dict(plain.named_parameters())
    for name, param in tp.named_parameters():
        torch.testing.assert_close(param.grad, grads_plain[name].grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="already applied"):
        parallelize_model(tp, groups)
    groups.destroy()
