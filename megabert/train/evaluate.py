"""Validation during pretraining: MLM loss (token-weighted), accuracy and perplexity on the validation split.

The masking of validation batches is deterministic per sample (data.eval_mask_prob, 15% by default), so every
evaluation of a run -- and of any run on the same data -- scores the same masked tokens.
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from megabert.config import TrainConfig
from megabert.model.inputs import prepare_inputs
from megabert.utils.logging import get_logger

log = get_logger(__name__)


class Validator:
    """Runs logging.eval_iters validation micro-batches per rank every logging.eval_interval steps."""

    def __init__(self, cfg: TrainConfig, data, device: torch.device, world_size: int, tp_group=None):
        self.cfg, self.data, self.device, self.world_size = cfg, data, device, world_size
        self.tp_group = tp_group  # tensor parallelism: each rank holds a vocabulary slice of the logits

    def due(self, step: int) -> bool:
        """Every eval_interval steps, not at the last step (the run evaluates once more after its final save)."""
        interval = self.cfg.logging.eval_interval
        return bool(interval) and step % interval == 0 and step < self.cfg.schedule.total_steps

    @torch.no_grad()
    def run(self, engine) -> dict[str, float]:
        """Metrics named eval/*, and eval/seconds: the time it took (the run clock leaves it out)."""
        engine.eval()
        start = time.perf_counter()
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # [loss x masked, correct, masked]
        batches = self.data.valid_batches()
        for _ in range(self.cfg.logging.eval_iters):
            batch = next(batches, None)
            if batch is None:  # a short validation split: start over, so every rank runs the same count
                batches = self.data.valid_batches()
                batch = next(batches, None)
                if batch is None:
                    raise RuntimeError("the validation split is empty; give data.split a non-zero valid weight")
            out = engine(**prepare_inputs(batch, self.cfg.model, self.device))
            labels = out.labels
            selected = labels != -100
            n = selected.sum()
            sums[0] += out.loss.double() * n
            sums[1] += (self._predictions(out.logits)[selected] == labels[selected]).sum()
            sums[2] += n
        if self.world_size > 1:
            dist.all_reduce(sums)
        loss_sum, correct, count = sums.tolist()
        result = {"eval/loss": loss_sum / max(count, 1),
                  "eval/accuracy": correct / max(count, 1) if correct == correct else None,
                  "eval/masked_tokens": count, "eval/seconds": time.perf_counter() - start}
        result["eval/perplexity"] = math.exp(min(result["eval/loss"], 50.0))
        engine.train()
        return result

    def _predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Argmax over the vocabulary; under tensor parallelism each rank holds a vocabulary slice."""
        if self.tp_group is not None:
            from megabert.parallel.cross_entropy import vocab_parallel_argmax

            return vocab_parallel_argmax(logits, self.tp_group)
        return logits.argmax(-1)
