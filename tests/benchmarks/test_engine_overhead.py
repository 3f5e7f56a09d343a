"""benchmarks/engine_overhead.py: which variants it times; CPU runs (gloo, 1 and 2 processes, a tiny model) in which
every engine variant trains exactly like today's engine and the loss check can fail; on a GPU, the device syncs per
step that the switches remove (docs/ENGINE.md's count)."""

import json
import subprocess
import sys

import pytest
import torch

from benchmarks.engine_overhead import (Setup, Variant, candidate_variants, engine_config,
                                        max_relative_difference)
from megabert.config import ModelConfig, OptimConfig, ScheduleConfig
from megabert.parallel.deepspeed_config import NEUTRAL_SWITCHES, applicable_switches
from tests.train.launch import REPO, _free_port, child_env, explain


def setup_for(device: str, world: int) -> Setup:
    return Setup(ModelConfig(), OptimConfig(), ScheduleConfig(), torch.device(device), 0, world, 256, 4, 17)


def test_one_gpu_variants_are_today_neutral_and_neutral_less_each_switch():
    setup = setup_for("cuda", 1)
    variants = {v.name: v for v in candidate_variants(setup, [1, 2])}
    for stage in (1, 2):
        neutral = applicable_switches(NEUTRAL_SWITCHES, stage, 1, True, "bf16")
        assert len(neutral) >= 3 and variants[f"zero{stage} neutral"].switches == tuple(neutral)
        assert variants[f"zero{stage} today"].switches == ()
        for name in neutral:  # timed without it, unless that generates neutral's own config
            less = variants.get(f"zero{stage} neutral - {name}")
            assert (name not in less.switches if less else
                    engine_config(setup, Variant("", stage, tuple(n for n in neutral if n != name)))
                    == engine_config(setup, variants[f"zero{stage} neutral"]))
        assert "bf16_no_overflow_scan" in variants[f"zero{stage} neutral + bf16_no_overflow_scan"].switches
    fp32 = engine_config(setup, variants["zero1 neutral + fp32 accumulation (BF16_Optimizer)"])
    assert fp32["data_types"] == {"grad_accum_dtype": "fp32"} and fp32["zero_optimization"]["stage"] == 1
    assert variants["plain"].zero_stage is None and list(variants)[0] == "plain"
    assert engine_config(setup, variants["zero2 today"])["gradient_accumulation_steps"] == 4


def test_a_variant_that_generates_an_earlier_ones_config_is_left_out():
    # On CPU overlap_comm is off already: leaving one_replica_no_overlap out changes nothing.
    names = [v.name for v in candidate_variants(setup_for("cpu", 1), [1, 2])]
    assert "zero1 neutral - one_replica_no_overlap" not in names and "zero1 neutral" in names
    configs = [json.dumps(engine_config(setup_for("cpu", 1), v), sort_keys=True)
               for v in candidate_variants(setup_for("cpu", 1), [1, 2]) if v.zero_stage is not None]
    assert len(configs) == len(set(configs))


def test_relative_difference_is_the_largest_over_the_steps():
    assert max_relative_difference([10.0, 9.0], [10.0, 9.9]) == pytest.approx(0.9 / 9.9)
    assert max_relative_difference([1.0], [1.0]) == 0.0


def _run(tmp_path, nproc: int, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The benchmark on the tiny model (the CPU unless args say --device cuda), 1 step x 2 rounds."""
    out = tmp_path / f"engine_overhead_{nproc}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(_free_port()), "-m", "benchmarks.engine_overhead", "--tiny", "--steps", "1", "--rounds", "2",
           "--warmup", "1", "--json-out", str(out), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=400)
    return proc, (json.loads(out.read_text()) if out.is_file() else {})


def _check_variants(result: dict, world: int) -> None:
    rows = {r["variant"]: r for r in result["variants"]}
    assert result["world_size"] == world and result["device"] == "cpu"
    assert {"plain", "zero1 today", "zero1 neutral", "zero2 today", "zero2 today + no_throughput_timer"} <= set(rows)
    for name, r in rows.items():
        assert r["step_ms"] > 0 and r["real_tokens_per_s"] > 0 and len(r["step_ms_rounds"]) == 2
        assert len(result["losses"][name]) == 1 + 2 * 1  # warm-up + rounds x steps, one loss per step
        if r["zero_stage"] is not None and "BF16_Optimizer" not in name:
            assert r["optimizer_wrapper"] == "DeepSpeedZeroOptimizer"
            assert r["loss_vs_today"] == 0.0, f"{name}: the switches changed the losses"
    assert rows["zero1 neutral + fp32 accumulation (BF16_Optimizer)"]["optimizer_wrapper"] == "BF16_Optimizer"


@pytest.mark.slow
def test_one_cpu_process_every_engine_variant_trains_like_today_and_a_zero_tolerance_fails(tmp_path):
    proc, result = _run(tmp_path, 1, "--loss-rtol", "0")
    assert proc.returncode == 1 and "LOSS CHECK FAILED" in proc.stdout, explain(proc)
    _check_variants(result, 1)
    # bf16 parameters against fp32 master weights: close, not equal; so a zero tolerance fails every engine.
    assert not result["loss_check_passed"] and "plain" not in result["loss_check_failed"]
    assert set(result["loss_check_failed"]) == {r["variant"] for r in result["variants"] if r["zero_stage"]}
    assert all(r["loss_vs_plain"] < 2e-2 for r in result["variants"])
    assert "| zero2 neutral |" in proc.stdout


@pytest.mark.slow
def test_two_cpu_processes_time_the_plain_step_under_ddp_and_the_engines(tmp_path):
    proc, result = _run(tmp_path, 2)
    assert proc.returncode == 0, explain(proc)
    assert result["loss_check_passed"] and result["global_batch_size"] == 4 * 4 * 2
    _check_variants(result, 2)


@pytest.mark.gpu
def test_on_a_gpu_the_switches_remove_the_device_syncs_of_each_step(tmp_path):
    proc, result = _run(tmp_path, 1, "--device", "cuda", "--warmup", "3", "--profile", "2", "--variants",
                        "zero1 today", "zero1 neutral", "zero2 today", "zero2 neutral")
    assert proc.returncode == 0, explain(proc)
    syncs = {r["variant"]: r["syncs_per_step"] for r in result["variants"]}
    assert syncs["plain"] == 0, syncs  # the trainer's protocol: nothing waits for the device
    for stage in (1, 2):
        # today: the throughput timer (2 per micro-batch), overlap_comm's epilogue, 3 in the step
        assert syncs[f"zero{stage} today"] >= 2 * 4 + 3, syncs
        assert syncs[f"zero{stage} neutral"] <= 3, syncs  # the step's scan, norm check and clip check remain
        assert syncs[f"zero{stage} neutral + bf16_no_overflow_scan"] <= 1, syncs  # the clip check remains
    for r in result["variants"]:
        assert r.get("loss_vs_today", 0.0) < 1e-2, r["variant"]  # the same arithmetic, up to GPU nondeterminism
