"""The generated DeepSpeed JSON: derived keys, merged extras, and clear errors for keys megabert owns."""

import pytest

from megabert.config import ConfigError, OptimConfig, ParallelConfig, ScheduleConfig
from megabert.parallel.deepspeed_config import KNOWN_DEEPSPEED_KEYS, build_deepspeed_config


def build(extra=None, **parallel):
    return build_deepspeed_config(ParallelConfig(**parallel), OptimConfig(grad_clip=0.5), 4096, 128, 8, extra)


def test_batch_precision_zero_and_clipping_are_derived():
    ds = build(zero_stage=2, precision="bf16")
    assert ds["train_batch_size"] == 4096 and ds["train_micro_batch_size_per_gpu"] == 128
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["bf16"] == {"enabled": True} and "fp16" not in ds
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == 0.5
    assert "optimizer" not in ds and "scheduler" not in ds
    assert "bf16" not in build(precision="fp32") and "fp16" not in build(precision="fp32")
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"}  # ZeRO-2 bf16 sums micro-batch gradients in fp32


def test_extra_keys_are_deep_merged():
    ds = build({"zero_optimization": {"reduce_bucket_size": 1000}, "activation_checkpointing": {"cpu_checkpointing": True}},
               zero_stage=1)
    assert ds["zero_optimization"] == {**build(zero_stage=1)["zero_optimization"], "reduce_bucket_size": 1000}
    assert ds["activation_checkpointing"] == {"cpu_checkpointing": True}


@pytest.mark.parametrize("key,owner", [("train_batch_size", "global_batch_size"), ("bf16", "parallel.precision"),
                                       ("optimizer", "optim"), ("scheduler", "schedule"),
                                       ("gradient_accumulation_steps", "micro_batch_size")])
def test_extra_cannot_redefine_what_megabert_owns(key, owner):
    with pytest.raises(ConfigError, match=f"'{key}'.*{owner}"):
        build({key: {}})


def test_unknown_deepspeed_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown DeepSpeed key 'zero_optimisation'.*zero_optimization"):
        build({"zero_optimisation": {"stage": 2}})


def test_conflicting_zero_stage_in_extra_is_rejected():
    with pytest.raises(ConfigError, match="conflicts with parallel.zero_stage"):
        build({"zero_optimization": {"stage": 3}}, zero_stage=1)


def test_batch_must_divide_micro_times_data_parallel():
    with pytest.raises(ConfigError, match="not divisible by micro_batch_size x data-parallel size"):
        build_deepspeed_config(ParallelConfig(), OptimConfig(), 96, 16, 4)


def test_generated_config_is_accepted_by_deepspeed():
    from deepspeed.runtime.config import DeepSpeedConfig

    ds = build_deepspeed_config(ParallelConfig(zero_stage=2), OptimConfig(grad_clip=0.5), 512, 128, 1,
                                {"activation_checkpointing": {"partition_activations": False}})
    parsed = DeepSpeedConfig(ds)  # no process group: world size 1
    assert parsed.zero_optimization_stage == 2 and parsed.gradient_clipping == 0.5
    assert set(ds) <= KNOWN_DEEPSPEED_KEYS
    # the throughput timer, which synchronises the device twice per micro-batch for a log line megabert never
    # reaches, is off: in the JSON and as DeepSpeed reads it
    assert ds["timers"] == {"throughput": {"enabled": False}} and not parsed.timers_config.enabled
