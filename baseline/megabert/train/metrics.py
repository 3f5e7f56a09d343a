"""Counting what a step did (tokens, FLOPs) and writing it down (JSON lines, TensorBoard, Weights & Biases).

FLOPs follow docs' benchmark protocol (shared/DESIGN.md): 6 x matmul parameters x real tokens, the MLM head
counted on the tokens it runs on (masked ones with the sparse head), plus attention 12 x layers x hidden x
sum(s_i^2), as megabert/utils/flops.py computes it for the benchmarks. It counts useful work, not the kernels' work, so padding and recomputation never raise it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import torch

from megabert.config import ModelConfig
from megabert.utils.flops import measure_matmul_tflops, useful_flops
from megabert.utils.logging import get_logger

log = get_logger(__name__)


def batch_counts(batch: dict[str, torch.Tensor], sparse_head: bool = True) -> dict[str, int]:
    """Host-side counts for one micro-batch (CPU tensors: no device sync).

    padded tokens (B x S), real tokens, masked tokens, head tokens (what the MLM head runs on), sum of s_i^2.
    """
    lengths = batch["attention_mask"].sum(dim=1)  # [B]
    real = int(lengths.sum())
    masked = int((batch["labels"] != -100).sum())
    return {"samples": int(batch["input_ids"].shape[0]), "padded_tokens": batch["input_ids"].numel(),
            "real_tokens": real, "masked_tokens": masked, "head_tokens": masked if sparse_head else real,
            "sum_sq_len": int((lengths * lengths).sum())}


def training_flops(cfg: ModelConfig, counts: dict[str, int]) -> float:
    """Useful FLOPs of forward + backward for the counted tokens."""
    return useful_flops(cfg, counts["real_tokens"], counts["head_tokens"], counts["sum_sq_len"])


def measure_peak_flops(device: torch.device, dtype: Optional[torch.dtype] = None) -> float:
    """Matmul FLOP/s measured on this device now (GPU: bf16 8192^3, as the benchmarks measure it; CPU: fp32
    1024^3), the MFU denominator."""
    if device.type == "cuda":
        return measure_matmul_tflops(device, dtype=dtype or torch.bfloat16) * 1e12
    # a shared CPU is noisy: the best of several short timings is the closest to its peak
    n, dtype, iters, repeats = 1024, dtype or torch.float32, 2, 5
    g = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG (dropout, resume) untouched
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 * iters / best


class MetricsWriter:
    """metrics.jsonl (always, appended across resumes), TensorBoard events and wandb (optional). Rank 0 only."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True, wandb_project: Optional[str] = None,
                 run_config: Optional[dict] = None, enabled: bool = True):
        self.enabled = enabled
        self._tb = self._wandb = None
        if not enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(out / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed: no event files (pip install tensorboard)")
        if wandb_project:
            try:
                import wandb

                self._wandb = wandb.init(project=wandb_project, dir=str(out), config=run_config, resume="allow")
            except ImportError:
                log.warning("logging.wandb_project is set but wandb is not installed; skipping wandb")

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
