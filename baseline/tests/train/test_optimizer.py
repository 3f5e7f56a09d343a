"""Decoupled AdamW and the warm-up/decay schedule, against hand-computed values."""

import math

import pytest
import torch
import torch.nn as nn

from megabert.config import ModelConfig, OptimConfig, ScheduleConfig
from megabert.train.optimizer import DecoupledAdamW, build_optimizer, build_scheduler, lr_factor, param_groups


def test_weight_decay_is_decoupled_from_lr_magnitude():
    """With a zero gradient Adam's update is 0, so only the decay acts: p *= 1 - wd * lr / peak_lr."""
    p = nn.Parameter(torch.full((3,), 2.0))
    opt = DecoupledAdamW([p], lr=0.5, weight_decay=0.1)
    for group in opt.param_groups:
        group["lr"] = 0.25  # half of the peak: the decay halves too, and does not scale with lr itself
    p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 2.0 * (1 - 0.1 * 0.5)))


def test_adam_part_matches_torch_adam_when_decay_is_zero():
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4, 4))
    b.data.copy_(a.data)
    ours = DecoupledAdamW([a], lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    ref = torch.optim.Adam([b], lr=1e-2, betas=(0.9, 0.98), eps=1e-6)
    for _ in range(3):
        g = torch.randn(4, 4)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b)


def test_skip_next_step_leaves_parameters_and_state_untouched():
    p = nn.Parameter(torch.ones(2))
    opt = DecoupledAdamW([p], lr=0.1, weight_decay=0.1)
    p.grad = torch.ones(2)
    opt.skip_next_step = True
    opt.step()
    assert torch.equal(p.detach(), torch.ones(2)) and not opt.state


def test_device_flag_skips_the_update_without_a_host_decision():
    """Fused Adam with `nonfinite` = 1 leaves parameters, decay and step count untouched; 0 steps normally."""
    p, q = nn.Parameter(torch.full((3,), 2.0)), nn.Parameter(torch.full((3,), 2.0))
    flagged = DecoupledAdamW([p], lr=0.1, weight_decay=0.1, fused=True)
    plain = DecoupledAdamW([q], lr=0.1, weight_decay=0.1, fused=True)
    p.grad, q.grad = torch.ones(3), torch.ones(3)
    flagged.nonfinite = torch.tensor(1.0)
    flagged.step()
    assert torch.equal(p.detach(), torch.full((3,), 2.0)) and flagged.state[p]["step"].item() == 0
    flagged.nonfinite = torch.tensor(0.0)
    flagged.step()
    plain.step()
    torch.testing.assert_close(p, q)


def test_biases_and_layernorm_are_not_decayed():
    from megabert.model.bert import MosaicBertForMaskedLM

    model = MosaicBertForMaskedLM(ModelConfig(vocab_size=128, hidden_size=32, num_layers=1, num_heads=2,
                                              intermediate_size=64))
    decay, no_decay = param_groups(model, 1e-5)
    assert decay["decoupled_weight_decay"] == 1e-5 and no_decay["decoupled_weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert any("norm" in names[id(p)] for p in no_decay["params"])
    unique = {id(p) for p in model.parameters()}
    assert len(decay["params"]) + len(no_decay["params"]) == len(unique)  # tied decoder counted once


def test_schedule_warmup_then_linear_decay_to_final_fraction():
    cfg = ScheduleConfig(total_steps=1000, warmup_fraction=0.06, final_lr_fraction=0.02)
    assert lr_factor(0, cfg) == pytest.approx(1 / 60)
    assert lr_factor(59, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(1.0)
    assert lr_factor(530, cfg) == pytest.approx(1 - 0.98 * 470 / 940)
    assert lr_factor(1000, cfg) == pytest.approx(0.02)
    assert lr_factor(5000, cfg) == pytest.approx(0.02)


def test_scheduler_drives_optimizer_lr_and_restores_from_state_dict():
    model = nn.Linear(4, 4)
    opt = build_optimizer(model, OptimConfig(lr=5e-4))
    sched = build_scheduler(opt, ScheduleConfig(total_steps=100, warmup_fraction=0.1))
    for _ in range(15):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4 * lr_factor(15, sched_cfg := ScheduleConfig(
        total_steps=100, warmup_fraction=0.1)))
    opt2 = build_optimizer(nn.Linear(4, 4), OptimConfig(lr=5e-4))
    sched2 = build_scheduler(opt2, sched_cfg)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == 15
    assert math.isclose(sched2.get_last_lr()[0], sched.get_last_lr()[0])


def test_flop_count_of_bert_base_step():
    """6 x params x tokens for the encoder, the head on masked tokens only, attention 12 L H sum(s^2)."""
    from megabert.train.metrics import batch_counts, training_flops

    cfg = ModelConfig()  # BERT-base shapes, GeGLU
    mask = torch.zeros(2, 8, dtype=torch.long)
    mask[0, :8], mask[1, :4] = 1, 1
    labels = torch.full((2, 8), -100)
    labels[0, 1] = labels[1, 2] = 7
    counts = batch_counts({"input_ids": torch.zeros(2, 8, dtype=torch.long), "attention_mask": mask,
                           "labels": labels})
    assert counts == {"samples": 2, "padded_tokens": 16, "real_tokens": 12, "masked_tokens": 2, "head_tokens": 2,
                      "sum_sq_len": 64 + 16}
    encoder = 12 * (4 * 768 ** 2 + 2 * 3072 * 768 + 3072 * 768)
    head = 768 ** 2 + 30528 * 768
    assert training_flops(cfg, counts) == 6 * encoder * 12 + 6 * head * 2 + 12 * 12 * 768 * 80
