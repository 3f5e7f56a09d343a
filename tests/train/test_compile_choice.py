"""Where the trainer compiles its model: parallel.compile true / false are obeyed, null compiles only where
compiling was measured faster (a GPU, no tensor parallelism, ZeRO 0-2)."""

import pytest
import torch

from megabert.config import ConfigError, ParallelConfig, TrainConfig, apply_overrides
from megabert.train.trainer import compile_wanted

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


def test_null_compiles_on_a_gpu_without_tensor_parallelism_or_zero3():
    assert compile_wanted(ParallelConfig(), CUDA)[0]
    for stage in (0, 1, 2):
        assert compile_wanted(ParallelConfig(zero_stage=stage), CUDA)[0]


@pytest.mark.parametrize("setting, device, reason", [
    (dict(), CPU, "GPU only"),
    (dict(tensor_parallel_size=2), CUDA, "tensor-parallel"),
    (dict(zero_stage=3), CUDA, "ZeRO-3"),
])
def test_null_keeps_the_model_eager_elsewhere_and_says_why(setting, device, reason):
    compiled, why = compile_wanted(ParallelConfig(**setting), device)
    assert not compiled and reason in why


@pytest.mark.parametrize("device", [CPU, CUDA])
def test_true_and_false_are_obeyed_on_every_device(device):
    forced = ParallelConfig(compile=True, tensor_parallel_size=2)
    assert compile_wanted(forced, device) == (True, "parallel.compile is true")
    assert compile_wanted(ParallelConfig(compile=False), device) == (False, "parallel.compile is false")


def test_the_setting_parses_as_true_false_or_null_and_nothing_else():
    cfg = TrainConfig()
    assert cfg.parallel.compile is None
    for raw, value in (("true", True), ("false", False), ("null", None), ("1", True)):
        assert apply_overrides(cfg, [("parallel.compile", raw)]).parallel.compile is value
    with pytest.raises(ConfigError, match="parallel.compile"):
        apply_overrides(cfg, [("parallel.compile", "sometimes")])
