"""The flat-gradient ZeRO 1/2 path trains like DeepSpeed's own gradient handling, writes checkpoints that either
path resumes exactly, skips a non-finite step on the device, and leaves runs it cannot serve to DeepSpeed. On CPU
processes over gloo; the cases marked gpu run the same comparison on a CUDA device."""

from __future__ import annotations

import math

import pytest
import torch

from megabert.config import OptimConfig, ParallelConfig, ScheduleConfig
from megabert.model.bert import MosaicBertForMaskedLM
from tests.parallel.launch import run_on_processes
from tests.parallel.tiny import mlm_batch, tiny_config

ACCUM, MICRO = 3, 3
OPTIM = OptimConfig(lr=3e-3, grad_clip=0.05, weight_decay=1e-2)  # a small clip: every step is clipped


def _engine(zero_stage: int, precision: str, world_size: int, flat: bool):
    from megabert.parallel.deepspeed_config import build_deepspeed_config, initialize
    from megabert.train.optimizer import build_optimizer, build_scheduler

    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config())
    optimizer = build_optimizer(model, OPTIM)
    scheduler = build_scheduler(optimizer, ScheduleConfig(total_steps=20, warmup_fraction=0.1))
    ds = build_deepspeed_config(ParallelConfig(zero_stage=zero_stage, precision=precision), OPTIM,
                                ACCUM * MICRO * world_size, MICRO, world_size, on_gpu=torch.cuda.is_available())
    return initialize(model, optimizer, scheduler, ds, flat_gradients=flat), optimizer


def _train(engine, optimizer, rank: int, steps: range, nan_at: int = -1) -> list[float]:
    losses = []
    for step in steps:
        for micro in range(ACCUM):
            batch = mlm_batch(engine.module.cfg, seed=1000 * step + 10 * micro + rank, lengths=(16, 11, 7))
            loss = engine(**{k: v.to(engine.device) for k, v in batch.items()}).loss
            if step == nan_at and micro == 1:
                loss = loss * float("nan")
            engine.backward(loss)
            if micro == ACCUM - 1:
                # what TrainStep does with the fused optimizer: a non-finite loss skips on the device
                optimizer.nonfinite = torch.tensor(float(not math.isfinite(loss.item())), device=engine.device)
            engine.step()
            losses.append(loss.item())
        optimizer.nonfinite = None
    return losses


def _masters(engine) -> list[torch.Tensor]:
    return [p.detach().cpu().clone() for p in engine.optimizer.single_partition_of_fp32_groups]


def compare_worker(rank: int, world_size: int, zero_stage: int, precision: str, ckpt_dir: str) -> dict:
    """Stock and flat on the same batches for 4 steps; then each resumes the other's step-2 checkpoint."""
    out = {}
    for flat in (False, True):
        engine, optimizer = _engine(zero_stage, precision, world_size, flat)
        out[flat] = {"class": type(engine.optimizer).__name__, "losses": _train(engine, optimizer, rank, range(2))}
        engine.save_checkpoint(f"{ckpt_dir}/{flat}", tag="step2")
        out[flat]["losses"] += _train(engine, optimizer, rank, range(2, 4))
        out[flat]["norm"] = float(engine.get_global_grad_norm())
        out[flat]["masters"] = _masters(engine)
    for flat in (False, True):  # resume the *other* path's checkpoint
        engine, optimizer = _engine(zero_stage, precision, world_size, flat)
        engine.load_checkpoint(f"{ckpt_dir}/{not flat}", tag="step2")
        out[f"resumed_{flat}"] = {"losses": _train(engine, optimizer, rank, range(2, 4)), "masters": _masters(engine)}
    return out


GPU_CASES = [pytest.param(1, 1, "bf16", marks=pytest.mark.gpu, id="gpu-zero1-bf16"),
             pytest.param(1, 2, "bf16", marks=pytest.mark.gpu, id="gpu-zero2-bf16")]


@pytest.mark.slow
@pytest.mark.parametrize("world_size,zero_stage,precision",
                         [(1, 1, "bf16"), (2, 1, "fp32"), (2, 2, "bf16")] + GPU_CASES)
def test_flat_gradients_train_and_resume_like_deepspeeds_own_handling(tmp_path, world_size, zero_stage, precision):
    results = run_on_processes(compare_worker, world_size, zero_stage, precision, str(tmp_path))
    # measured: masters within 1.3e-5 (bf16) and 1.5e-8 (fp32), norms within 2e-6 relative (fp64 vs fp32 sums)
    tol = dict(rel=1e-3, abs=1e-5) if precision == "bf16" else dict(rel=1e-5, abs=1e-7)
    for rank, r in enumerate(results):
        assert r[False]["class"] == "DeepSpeedZeroOptimizer" and r[True]["class"] == "FlatGradientZeroOptimizer"
        assert r[True]["losses"] == pytest.approx(r[False]["losses"], **tol), f"rank {rank}"
        assert r[True]["norm"] == pytest.approx(r[False]["norm"], rel=2e-5)
        for stock, flat in zip(r[False]["masters"], r[True]["masters"]):
            assert torch.allclose(flat, stock, rtol=0, atol=1e-4 if precision == "bf16" else 1e-6)
        assert r[False]["masters"][0].abs().max() > 0
        # each path resumes the other's checkpoint and continues as the other did
        for flat in (False, True):
            assert r[f"resumed_{flat}"]["losses"] == pytest.approx(r[not flat]["losses"][2 * ACCUM:], **tol)
    if world_size > 1:  # the replicas hold one model: the masters are partitions of it, the losses differ by data
        assert results[0][True]["losses"] != results[1][True]["losses"]


def resume_exact_worker(rank: int, world_size: int, ckpt_dir: str) -> dict:
    """Flat path: 4 steps straight, against 2 steps, a checkpoint, a new engine and 2 more."""
    engine, optimizer = _engine(1, "bf16", world_size, True)
    straight = _train(engine, optimizer, rank, range(4))
    masters = _masters(engine)
    engine, optimizer = _engine(1, "bf16", world_size, True)
    _train(engine, optimizer, rank, range(2))
    engine.save_checkpoint(ckpt_dir, tag="step2")
    engine, optimizer = _engine(1, "bf16", world_size, True)
    engine.load_checkpoint(ckpt_dir, tag="step2")
    return {"straight": straight[2 * ACCUM:], "resumed": _train(engine, optimizer, rank, range(2, 4)),
            "masters": masters, "resumed_masters": _masters(engine)}


@pytest.mark.slow
def test_flat_gradients_resume_bit_for_bit(tmp_path):
    (r,) = run_on_processes(resume_exact_worker, 1, str(tmp_path))
    assert r["resumed"] == r["straight"]
    assert all(torch.equal(a, b) for a, b in zip(r["masters"], r["resumed_masters"]))


def nonfinite_worker(rank: int, world_size: int, zero_stage: int) -> dict:
    engine, optimizer = _engine(zero_stage, "bf16", world_size, True)
    _train(engine, optimizer, rank, range(1))
    before = _masters(engine)
    state = [s["exp_avg"].clone() for s in optimizer.state.values()]
    losses = _train(engine, optimizer, rank, range(1, 2), nan_at=1)  # a NaN loss in step 1: skipped
    skipped = _masters(engine)
    state_after = [s["exp_avg"].clone() for s in optimizer.state.values()]
    later = _train(engine, optimizer, rank, range(2, 3))
    return {"before": before, "skipped": skipped, "after": _masters(engine), "losses": losses, "later": later,
            "state": state, "state_after": state_after}


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [1, 2])
def test_a_nonfinite_step_leaves_weights_and_moments_untouched_then_training_goes_on(zero_stage):
    (r,) = run_on_processes(nonfinite_worker, 1, zero_stage)
    assert any(math.isnan(x) for x in r["losses"])
    assert all(torch.equal(a, b) for a, b in zip(r["before"], r["skipped"]))
    assert all(torch.equal(a, b) for a, b in zip(r["state"], r["state_after"]))
    assert all(math.isfinite(x) for x in r["later"])
    assert not all(torch.equal(a, b) for a, b in zip(r["skipped"], r["after"]))
    assert all(torch.isfinite(m).all() for m in r["after"])


def ineligible_worker(rank: int, world_size: int) -> dict:
    from megabert.parallel.flat_gradients import ineligible

    engine, _ = _engine(0, "bf16", world_size, True)
    return {"stage0": type(engine.optimizer).__name__, "reason": ineligible(engine.optimizer)}


@pytest.mark.slow
def test_a_run_the_flat_path_cannot_serve_keeps_deepspeeds_optimizer_and_says_why():
    (r,) = run_on_processes(ineligible_worker, 1)
    assert r["stage0"] != "FlatGradientZeroOptimizer"
    assert "not ZeRO 1/2's DeepSpeedZeroOptimizer" in r["reason"]


def huge_gradient_worker(rank: int, world_size: int) -> dict:
    engine, optimizer = _engine(1, "bf16", world_size, True)
    before = _masters(engine)
    batch = {k: v.to(engine.device) for k, v in mlm_batch(engine.module.cfg, seed=7).items()}
    for micro in range(ACCUM):  # gradients ~1e22: their squared norm is beyond fp32, the norm itself is not
        engine.backward(engine(**batch).loss * 1e22)
        engine.step()
    return {"before": before, "after": _masters(engine), "norm": float(engine.get_global_grad_norm())}


@pytest.mark.slow
def test_a_huge_but_finite_gradient_is_clipped_not_skipped():
    (r,) = run_on_processes(huge_gradient_worker, 1)
    assert math.isfinite(r["norm"]) and r["norm"] > 1e20
    assert all(torch.isfinite(m).all() for m in r["after"])
    assert not all(torch.equal(a, b) for a, b in zip(r["before"], r["after"]))


def unflagged_nan_worker(rank: int, world_size: int) -> dict:
    """A NaN gradient the trainer did not flag (optimizer.nonfinite stays None): the norm alone skips the step."""
    engine, optimizer = _engine(1, "bf16", world_size, True)
    batch = {k: v.to(engine.device) for k, v in mlm_batch(engine.module.cfg, seed=3).items()}

    def step(scale: float) -> None:
        for micro in range(ACCUM):
            engine.backward(engine(**batch).loss * scale)
            engine.step()

    step(1.0)
    before = _masters(engine)
    step(float("nan"))
    skipped = _masters(engine)
    step(1.0)
    return {"before": before, "skipped": skipped, "after": _masters(engine), "flag": optimizer.nonfinite}


@pytest.mark.slow
def test_an_unflagged_nonfinite_gradient_is_skipped_by_its_norm_and_leaves_no_flag_behind():
    (r,) = run_on_processes(unflagged_nan_worker, 1)
    assert all(torch.equal(a, b) for a, b in zip(r["before"], r["skipped"]))
    assert not all(torch.equal(a, b) for a, b in zip(r["skipped"], r["after"]))  # the next step is not skipped
    assert all(torch.isfinite(m).all() for m in r["after"]) and r["flag"] is None
