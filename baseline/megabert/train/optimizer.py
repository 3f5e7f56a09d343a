"""MosaicBERT's optimizer and schedule: decoupled AdamW, linear warm-up, linear decay to a fraction of the peak.

Decoupled weight decay (Loshchilov & Hutter, as Composer's DecoupledAdamW): each step shrinks a parameter by
`weight_decay * lr / peak_lr`, i.e. the decay follows the schedule's shape but not the lr's magnitude, so
weight_decay 1e-5 means "1e-5 of the weight per step at peak". torch's AdamW instead shrinks by lr * wd.
Biases and LayerNorm parameters (every tensor with fewer than 2 dims) are not decayed.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from megabert.config import OptimConfig, ScheduleConfig


class DecoupledAdamW(torch.optim.Adam):
    """Adam (torch's own, fused/foreach kernels) plus decoupled weight decay applied before the update.

    Param-group keys: `decoupled_weight_decay` (the per-step shrink at peak lr) and `peak_lr`. Adam's own
    `weight_decay` (L2 added to the gradient) stays 0. Two ways to drop an update whose loss was not finite:
      - `nonfinite`: a 0-d float tensor on the parameters' device (1 = skip). With fused Adam the skip happens on
        the device (Adam's `found_inf`, the decay multiplied by 1 - flag): the host never waits for the device.
      - `skip_next_step = True`: the next `step()` returns at once (the host already knows; non-fused Adam).
    """

    def __init__(self, params: Iterable, lr: float, betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6,
                 weight_decay: float = 1e-5, **adam_kwargs):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            group.setdefault("decoupled_weight_decay", weight_decay)
            group.setdefault("peak_lr", lr)
        super().__init__(groups, lr=lr, betas=betas, eps=eps, weight_decay=0.0, **adam_kwargs)
        self.skip_next_step = False
        self.nonfinite: torch.Tensor | None = None

    @property
    def skips_on_device(self) -> bool:
        return bool(self.defaults.get("fused"))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        if self.skip_next_step:
            return None
        flag = self.nonfinite if self.skips_on_device else None
        for group in self.param_groups:
            decay = group["decoupled_weight_decay"] * group["lr"] / group["peak_lr"]
            params = [p for p in group["params"] if p.grad is not None]
            if decay and params:
                if flag is None:
                    torch._foreach_mul_(params, 1.0 - decay)
                else:
                    torch._foreach_mul_(params, 1.0 - decay * (1.0 - flag.to(params[0].device)))
        if flag is None:
            return super().step(closure)
        self.found_inf = flag  # read by torch's fused Adam: no update, no step count, where it is 1
        try:
            return super().step(closure)
        finally:
            del self.found_inf


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices (decayed) and biases/LayerNorm/1-d parameters (not decayed). Tied weights once."""
    decay, no_decay, seen = [], [], set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "decoupled_weight_decay": weight_decay},
              {"params": no_decay, "decoupled_weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool = True) -> DecoupledAdamW:
    """Fused Adam (CPU and GPU) by default: one kernel per group, and non-finite steps skip on the device."""
    kwargs = {"fused": True} if fused else {"foreach": True}
    return DecoupledAdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                          weight_decay=cfg.weight_decay, **kwargs)


def lr_factor(step: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based).

    Warm-up: (step + 1) / W for the first W = round(warmup_fraction x total_steps) steps, so the first update is
    not wasted at lr 0; then linear from 1 at step W to final_lr_fraction at total_steps, flat afterwards.
    """
    warmup = round(cfg.warmup_fraction * cfg.total_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, cfg.total_steps - warmup))
    return 1.0 - (1.0 - cfg.final_lr_fraction) * progress


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig) -> LambdaLR:
    """A LambdaLR (state_dict/load_state_dict for checkpoints) stepping once per optimizer step."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
