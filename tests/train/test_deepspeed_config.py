"""The generated DeepSpeed JSON: derived keys, merged extras, and clear errors for keys megabert owns; the engine
switches: where each applies, that DeepSpeed reads them, and (CPU, gloo, 1 and 2 processes) that an engine with all
of them trains to today's losses exactly and writes checkpoints that export and resume as today's do.

Run as a script under torchrun, this file is the worker of those engine tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------- engine switches

from megabert.parallel.deepspeed_config import (ENGINE_SWITCHES, NEUTRAL_SWITCHES, OVERLAP_BUCKET_ELEMENTS,
                                                applicable_switches)


def generated(stage=2, dp=1, on_gpu=True, switches=(), precision="bf16", extra=None):
    """The config of a 4-micro-batch step at `dp` replicas (micro-batch 128)."""
    return build_deepspeed_config(ParallelConfig(zero_stage=stage, precision=precision), OptimConfig(grad_clip=1.0),
                                  128 * 4 * dp, 128, dp, extra, on_gpu=on_gpu, switches=switches)


def parsed(ds):
    """DeepSpeed's reading of `ds` in this process (world size 1: a dp > 1 batch is restated for one replica)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    one = {**ds, "train_batch_size": ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"]}
    return DeepSpeedConfig(one)


def test_no_engine_switch_is_on_by_default():
    ds = generated(stage=2, dp=1)
    assert "timers" not in ds and ds["bf16"] == {"enabled": True}
    assert {k: ds["zero_optimization"][k] for k in ("overlap_comm", "contiguous_gradients", "reduce_scatter",
                                                     "reduce_bucket_size")} == {
        "overlap_comm": True, "contiguous_gradients": True, "reduce_scatter": True, "reduce_bucket_size": int(5e8)}


def test_one_replica_zero2_gets_every_neutral_switch_and_deepspeed_reads_them():
    ds = generated(stage=2, dp=1, switches=NEUTRAL_SWITCHES)
    zero = ds["zero_optimization"]
    assert (zero["overlap_comm"], zero["reduce_scatter"], zero["contiguous_gradients"]) == (False, False, False)
    assert zero["reduce_bucket_size"] == int(5e8)  # the overlap bucket is for several replicas only
    assert ds["timers"] == {"throughput": {"enabled": False}}
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"} and ds["bf16"] == {"enabled": True}
    config = parsed(ds)
    assert not config.zero_config.overlap_comm and not config.zero_config.reduce_scatter
    assert not config.zero_config.contiguous_gradients and not config.timers_config.enabled
    assert config.zero_optimization_stage == 2 and config.bfloat16_config.check_grad_overflow  # still scanned
    assert set(ds) <= KNOWN_DEEPSPEED_KEYS


def test_several_replicas_keep_overlap_and_get_buckets_that_fill_during_the_backward():
    ds = generated(stage=2, dp=8, switches=NEUTRAL_SWITCHES)
    zero = ds["zero_optimization"]
    assert (zero["overlap_comm"], zero["reduce_scatter"], zero["contiguous_gradients"]) == (True, True, True)
    assert zero["reduce_bucket_size"] == OVERLAP_BUCKET_ELEMENTS
    config = parsed(ds)
    assert config.zero_config.overlap_comm and config.zero_config.reduce_bucket_size == OVERLAP_BUCKET_ELEMENTS
    # On CPU there is no overlap to feed: the bucket stays as it is.
    assert generated(stage=2, dp=8, on_gpu=False, switches=NEUTRAL_SWITCHES)["zero_optimization"][
        "reduce_bucket_size"] == int(5e8)


@pytest.mark.parametrize("dp", [1, 4])
def test_zero1_loses_its_gradient_hooks_at_any_data_parallel_size(dp):
    ds = generated(stage=1, dp=dp, switches=NEUTRAL_SWITCHES)
    assert ds["zero_optimization"]["contiguous_gradients"] is False
    assert ds["zero_optimization"]["overlap_comm"] is False
    assert ds["zero_optimization"]["reduce_bucket_size"] == int(5e8)
    config = parsed(ds)
    assert not config.zero_config.contiguous_gradients and not config.zero_config.overlap_comm


def test_zero0_and_zero3_get_only_the_throughput_timer_switch():
    for stage in (0, 3):
        assert applicable_switches(ENGINE_SWITCHES, stage, 1, True, "bf16") == ["no_throughput_timer"]
    ds3 = generated(stage=3, dp=1, switches=ENGINE_SWITCHES)
    assert ds3["zero_optimization"] == generated(stage=3, dp=1)["zero_optimization"]
    assert ds3["timers"] == {"throughput": {"enabled": False}} and ds3["bf16"] == {"enabled": True}


def test_overflow_scan_switch_is_not_neutral_and_applies_to_bf16_only():
    assert "bf16_no_overflow_scan" not in NEUTRAL_SWITCHES and ENGINE_SWITCHES["bf16_no_overflow_scan"].caveat
    assert all(ENGINE_SWITCHES[name].neutral for name in NEUTRAL_SWITCHES)
    ds = generated(stage=2, dp=1, switches=["bf16_no_overflow_scan"])
    assert ds["bf16"] == {"enabled": True, "check_grad_overflow": False}
    assert not parsed(ds).bfloat16_config.check_grad_overflow
    assert "bf16" not in generated(stage=2, dp=1, precision="fp32", switches=["bf16_no_overflow_scan"])


def test_deepspeed_extra_still_wins_over_a_switch():
    ds = generated(stage=2, dp=1, switches=NEUTRAL_SWITCHES, extra={"zero_optimization": {"overlap_comm": True}})
    assert ds["zero_optimization"]["overlap_comm"] is True and ds["zero_optimization"]["reduce_scatter"] is False


def test_unknown_engine_switch_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown engine switch 'no_throughput_timers'.*'no_throughput_timer'"):
        generated(switches=["no_throughput_timers"])


def test_every_engine_switch_is_documented(repo_root):
    text = (repo_root / "docs" / "ENGINE.md").read_text()
    missing = [name for name in ENGINE_SWITCHES if f"`{name}`" not in text]
    assert not missing, f"docs/ENGINE.md does not describe {missing}"


# ------------------------------------------------------------------------------ engines on CPU (worker below)

ENGINE_STEPS, ENGINE_ACCUM, ENGINE_MICRO = 3, 2, 4


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_switched_engine_trains_like_todays_and_its_checkpoint_exports_and_resumes(tmp_path, nproc):
    from tests.train.launch import REPO, _free_port, child_env, explain

    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(_free_port()), str(Path(__file__).resolve()), "--out", str(out), "--checkpoints", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, explain(proc)
    result = json.loads(out.read_text())
    for stage in ("1", "2"):
        r = result[stage]
        assert r["wrapper"] == "DeepSpeedZeroOptimizer"
        assert r["switches"], f"ZeRO-{stage}: no switch applied"
        assert r["losses_switched"] == r["losses_today"], f"ZeRO-{stage}: the switches changed the losses"
        assert len(r["losses_today"]) == ENGINE_STEPS and r["losses_today"][-1] < r["losses_today"][0]
        assert r["exported_names_missing"] == [] and r["export_max_abs_diff"] == 0.0
        assert r["resumed_loss"] == r["continued_loss"], f"ZeRO-{stage}: resume with today's config is not exact"
        assert r["resume_weights_max_abs_diff"] == 0.0


def _engine_worker(out: Path, checkpoints: Path) -> None:
    """Per ZeRO stage 1 and 2: today's engine and one with every engine switch train ENGINE_STEPS steps on the
    same batches; the switched one saves a checkpoint, which export consolidates and today's engine resumes from
    (one more step each, compared with the switched engine's own next step). Rank 0 writes the comparison."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param

    from megabert.config import ModelConfig
    from megabert.model.bert import MosaicBertForMaskedLM
    from megabert.model.inputs import prepare_inputs
    from megabert.parallel.deepspeed_config import initialize
    from megabert.train.optimizer import build_optimizer, build_scheduler
    from megabert.utils.distributed import discover_env, init_distributed

    from megabert.checkpoint.export import consolidated_state_dict
    from megabert.checkpoint.manager import ENGINE_TAG

    env = discover_env()
    init_distributed(env, "gloo", "cpu")
    model_cfg = ModelConfig(vocab_size=256, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            hidden_dropout=0.1)
    gen = torch.Generator().manual_seed(1 + env.rank)
    batches = []
    for _ in range((ENGINE_STEPS + 1) * ENGINE_ACCUM):
        lengths = torch.randint(8, 33, (ENGINE_MICRO,), generator=gen)
        mask = (torch.arange(32)[None, :] < lengths[:, None]).long()  # [B, S]
        ids = torch.randint(5, 256, (ENGINE_MICRO, 32), generator=gen) * mask
        labels = torch.where((torch.rand(ENGINE_MICRO, 32, generator=gen) < 0.3) & mask.bool(), ids, -100)
        batches.append(prepare_inputs({"input_ids": ids, "attention_mask": mask, "labels": labels}, model_cfg, "cpu"))

    def build(stage: int, switches):
        torch.manual_seed(0)
        model = MosaicBertForMaskedLM(model_cfg)
        optimizer = build_optimizer(model, OptimConfig(lr=3e-3))
        scheduler = build_scheduler(optimizer, ScheduleConfig(total_steps=ENGINE_STEPS + 1, warmup_fraction=0.25))
        ds = build_deepspeed_config(ParallelConfig(zero_stage=stage, precision="bf16", device="cpu"),
                                    OptimConfig(grad_clip=1.0), ENGINE_MICRO * ENGINE_ACCUM * env.world_size,
                                    ENGINE_MICRO, env.world_size, on_gpu=False, switches=switches)
        return initialize(model, optimizer, scheduler, ds), optimizer

    def train(engine, optimizer, steps) -> list[float]:
        losses = []
        for step in steps:
            torch.manual_seed(1000 * step + env.rank)  # dropout: the same masks for every engine at a step
            total = torch.zeros(())
            for micro in range(ENGINE_ACCUM):
                loss = engine(**batches[step * ENGINE_ACCUM + micro]).loss
                engine.backward(loss)
                total += loss.detach().float()
                if micro == ENGINE_ACCUM - 1:
                    optimizer.nonfinite = torch.zeros(())  # the trainer's flag: every loss was finite
                engine.step()
            optimizer.nonfinite = None
            dist.all_reduce(total)
            losses.append(total.item() / ENGINE_ACCUM / env.world_size)
        return losses

    def fp32_weights(engine) -> dict:  # collective: every rank takes part
        return {name: safe_get_full_fp32_param(p).clone() for name, p in engine.module.named_parameters()}

    def max_diff(a: dict, b: dict) -> float:
        return max(float((a[k] - b[k]).abs().max()) for k in a)

    result = {}
    for stage in (1, 2):
        today, today_opt = build(stage, ())
        losses_today = train(today, today_opt, range(ENGINE_STEPS))
        switched, switched_opt = build(stage, list(ENGINE_SWITCHES))
        losses_switched = train(switched, switched_opt, range(ENGINE_STEPS))
        checkpoint = checkpoints / f"zero{stage}"
        switched.save_checkpoint(str(checkpoint), tag=ENGINE_TAG)
        saved = fp32_weights(switched)
        continued_loss = train(switched, switched_opt, [ENGINE_STEPS])[0]
        continued = fp32_weights(switched)
        resumed, resumed_opt = build(stage, ())
        resumed.load_checkpoint(str(checkpoint), tag=ENGINE_TAG)
        resumed_loss = train(resumed, resumed_opt, [ENGINE_STEPS])[0]
        resumed_weights = fp32_weights(resumed)
        dist.barrier()
        if env.rank == 0:
            exported = consolidated_state_dict(checkpoint, stage)
            result[str(stage)] = {
                "wrapper": type(switched.optimizer).__name__,
                "switches": applicable_switches(ENGINE_SWITCHES, stage, env.world_size, False, "bf16"),
                "losses_today": losses_today, "losses_switched": losses_switched,
                "exported_names_missing": sorted(set(saved) - set(exported)),
                "export_max_abs_diff": max_diff(saved, {k: exported[k] for k in saved if k in exported}),
                "continued_loss": continued_loss, "resumed_loss": resumed_loss,
                "resume_weights_max_abs_diff": max_diff(continued, resumed_weights)}
        for engine in (today, switched, resumed):
            engine.destroy()
        dist.barrier()
    if env.rank == 0:
        out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    parser = argparse.ArgumentParser(description="worker of the engine-switch tests")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    _engine_worker(cli.out, cli.checkpoints)
