"""The plain training step: megabert with torch's fused AdamW and nothing else -- the trainer's reference.

No engine, no data loading: forward (compiled where the trainer compiles it, with the trainer's MLM output), loss,
backward over `accum` micro-batches already on the device, the gradient clipped, one fused decoupled-AdamW update
and the schedule's step. fp32 master weights with bf16 autocast on a GPU (precision bf16), fp32 on a CPU. What the
trainer loses against this is what DeepSpeed, data loading, logging and checkpoints cost it.
"""

from __future__ import annotations

import contextlib

import torch

from megabert.config import TrainConfig
from megabert.model.bert import MosaicBertForMaskedLM
from megabert.model.compile import compile_model
from megabert.train.optimizer import build_optimizer, build_scheduler
from megabert.train.trainer import compile_wanted


class PlainStep:
    """step(micro_batches) runs one optimizer step on a list of model-input dicts (one per micro-batch)."""

    def __init__(self, cfg: TrainConfig, device: torch.device, seed: int = 0, mlm_output: str = "loss"):
        generator_state = torch.get_rng_state()
        torch.manual_seed(seed)
        self.model = MosaicBertForMaskedLM(cfg.model).to(device).train()
        torch.set_rng_state(generator_state)  # the caller's RNG stream is left as it was
        if compile_wanted(cfg.parallel, device)[0]:  # as the trainer runs it
            compile_model(self.model, backend="inductor" if device.type == "cuda" else "aot_eager")
        self.mlm_output = mlm_output
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule)
        self.grad_clip = cfg.optim.grad_clip
        self.device = device
        self.bf16 = cfg.parallel.precision == "bf16" and device.type == "cuda"

    def autocast(self):
        if self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, micro_batches: list[dict]) -> torch.Tensor:
        """The mean micro-batch loss (on the device; reading it would synchronise)."""
        total = torch.zeros((), device=self.device)
        for inputs in micro_batches:
            with self.autocast():
                loss = self.model(**inputs, mlm_output=self.mlm_output).loss / len(micro_batches)
            loss.backward()
            total += loss.detach()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total
