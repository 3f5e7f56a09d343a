"""TP = 2 x DP = 2 (4 processes) through DeepSpeed ZeRO-1 and ZeRO-2 tracks a single process, clipping included."""

import json

import numpy as np
import pytest
import torch

from megabert.config import TrainConfig, to_dict
from megabert.parallel.tp_checkpoint import merge_checkpoint, merge_state_dicts, read_config, read_shards
from tests.parallel.launch import run_on_processes
from tests.parallel.tiny import tiny_config
from tests.parallel.workers import single_process_reference, zero_tp_worker

pytestmark = pytest.mark.slow
TP, WORLD = 2, 4
RUNS = [(1, 20, "fp32"), (2, 5, "fp32"), (2, 5, "bf16")]  # (ZeRO stage, steps, precision)
IDS = [f"zero{stage}-{precision}" for stage, _, precision in RUNS]


def _tolerance(index):
    """fp32 runs match to rounding; bf16 weights and activations only approximately."""
    return 1e-5 if RUNS[index][2] == "fp32" else 2e-2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ds_ckpt")
    ranks = run_on_processes(zero_tp_worker, WORLD, TP, RUNS, str(ckpt))
    reference = single_process_reference(WORLD // TP, max(run[1] for run in RUNS))
    return ranks, reference, ckpt


def _replica_mean_losses(ranks, index):
    """Loss per step averaged over data-parallel replicas (TP rank 0 of each): the global batch's loss."""
    return np.mean([r[index]["losses"] for r in ranks if r[index]["tp_rank"] == 0], axis=0)


@pytest.mark.parametrize("index", range(len(RUNS)), ids=IDS)
def test_loss_curve_tracks_single_process(run, index):
    ranks, reference, _ = run
    steps = RUNS[index][1]
    losses = _replica_mean_losses(ranks, index)
    np.testing.assert_allclose(losses, reference["losses"][:steps], rtol=_tolerance(index))
    if steps >= 20:
        assert losses[-5:].mean() < losses[:5].mean() - 0.05  # it trains


@pytest.mark.parametrize("index", range(len(RUNS)), ids=IDS)
def test_clipping_uses_global_norm_over_tp_and_dp(run, index):
    """DeepSpeed's norm counts each shard once and each replicated tensor once: it equals the single-process
    norm (which is > grad_clip, so clipping is active and a wrong norm would also move the losses)."""
    ranks, reference, _ = run
    steps = RUNS[index][1]
    assert max(reference["grad_norms"][:steps]) > 0.5
    for r in ranks:
        np.testing.assert_allclose(r[index]["grad_norms"], reference["grad_norms"][:steps], rtol=_tolerance(index))


def test_tp_ranks_agree_on_loss(run):
    ranks, _, _ = run
    by_replica = {}
    for r in ranks:
        by_replica.setdefault(r[0]["dp_rank"], []).append(r[0]["losses"])
    for losses in by_replica.values():
        assert losses[0] == losses[1]


def test_deepspeed_checkpoint_is_sharded_by_tp_rank_and_merges(run):
    ranks, reference, ckpt = run
    shards = read_shards(ckpt / "run0" / "final")  # mp_rank_00/01_model_states.pt
    assert len(shards) == TP
    trained = {r[0]["tp_rank"]: r[0]["state"] for r in ranks if r[0]["dp_rank"] == 0}
    for tp_rank, shard in enumerate(shards):
        for key, tensor in trained[tp_rank].items():
            assert torch.equal(shard[key], tensor), key
    merged = merge_state_dicts(shards, strict_replicated=True)
    for key, tensor in reference["state"].items():
        torch.testing.assert_close(merged[key], tensor, rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")


def test_bf16_run_merges_to_its_fp32_master_weights(run):
    """A bf16 run's shards merge to the ZeRO fp32 master weights (consolidated per TP rank over DP partitions),
    whose bf16 rounding is exactly the module's bf16 weights."""
    _, _, ckpt = run
    tag = ckpt / "run2" / "final"
    master = merge_state_dicts(read_shards(tag), strict_replicated=True)
    module = merge_state_dicts(read_shards(tag, fp32_master=False), strict_replicated=True)
    assert master.keys() == module.keys()
    assert all(t.dtype == torch.float32 for t in master.values())
    assert all(t.dtype == torch.bfloat16 for t in module.values())
    for key in master:
        assert torch.equal(master[key].to(torch.bfloat16), module[key]), key
    assert any(not torch.equal(master[k], module[k].float()) for k in master)  # more than bf16 precision


def test_merge_tp_reads_a_trainer_step_directory(run, tmp_path):
    """step_N/ = run config.json + one DeepSpeed tag directory: merge-tp needs no other argument."""
    _, _, ckpt = run
    step_dir = ckpt / "run0"  # holds the tag directory final/
    (step_dir / "config.json").write_text(json.dumps(to_dict(TrainConfig(model=tiny_config()))))
    out = merge_checkpoint(step_dir, tmp_path / "exported")
    (merged,) = read_shards(out)
    expected = merge_state_dicts(read_shards(step_dir / "final"))
    assert merged.keys() == expected.keys() and all(torch.equal(merged[k], expected[k]) for k in merged)
    cfg, content = read_config(out)
    assert cfg == tiny_config() and set(content) == {"model", "source_checkpoint"}
