"""Shared pieces of the GPU benchmarks: fixed-seed length distributions, batches, CUDA-event timing.

Length distributions (the benchmark protocol of docs/ARCHITECTURE.md), fixed seed, lengths in [8, seq]:
  c4-128  seq 128: 80% of samples full length, the rest log-normal (median 60, sigma 0.8)  -> ~10% padding
  c4-512  seq 512: 15% full length, the rest log-normal (median 160, sigma 1.0)            -> ~50% padding
They mimic C4 documents truncated to seq tokens (most are longer than 128, few longer than 512).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

DISTRIBUTIONS = {
    # name: (seq_len, fraction of full-length samples, log-normal median, sigma)
    "c4-128": (128, 0.80, 60.0, 0.8),
    "c4-512": (512, 0.15, 160.0, 1.0),
}


def sample_lengths(name: str, batch: int, generator: torch.Generator) -> list[int]:
    seq, full, median, sigma = DISTRIBUTIONS[name]
    normal = torch.randn(batch, generator=generator, dtype=torch.float64)
    lengths = torch.exp(math.log(median) + sigma * normal).round().clamp(8, seq)
    lengths[torch.rand(batch, generator=generator, dtype=torch.float64) < full] = seq
    return [int(x) for x in lengths]


@dataclass
class MlmBatch:
    input_ids: torch.Tensor  # [B, S]
    attention_mask: torch.Tensor  # [B, S], 1 on real tokens (left-aligned)
    labels: torch.Tensor  # [B, S], -100 except on masked real tokens
    lengths: list[int]

    @property
    def masked_tokens(self) -> int:
        return int((self.labels != -100).sum())


def make_mlm_batches(name: str, batch: int, count: int, vocab: int, device: torch.device, seed: int = 0,
                     mask_prob: float = 0.3) -> list[MlmBatch]:
    """`count` fixed-seed batches of random token ids with `mask_prob` of real tokens labelled."""
    gen = torch.Generator().manual_seed(seed)
    seq = DISTRIBUTIONS[name][0]
    out = []
    for _ in range(count):
        lengths = sample_lengths(name, batch, gen)
        mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()  # [B, S]
        ids = torch.randint(1000, vocab, (batch, seq), generator=gen) * mask  # pad id 0
        chosen = (torch.rand(batch, seq, generator=gen) < mask_prob) & mask.bool()
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        out.append(MlmBatch(ids.to(device), mask.to(device), labels.to(device), lengths))
    return out


def padding_fraction(batches: list[MlmBatch]) -> float:
    real = sum(sum(b.lengths) for b in batches)
    total = sum(b.input_ids.numel() for b in batches)
    return 1.0 - real / total


def time_cuda(fn: Callable[[int], None], warmup: int, iters: int) -> list[float]:
    """Seconds per call of fn(i) for iters calls after warmup calls, each timed with CUDA events."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    return time_steps(fn, warmup, iters)


def time_steps(fn: Callable[[int], None], start: int, iters: int, cuda: bool = True) -> list[float]:
    """Seconds per call of fn(start), fn(start + 1), ...: CUDA events around each call on a GPU, the wall clock
    on a CPU."""
    if not cuda:
        times = []
        for i in range(iters):
            began = time.perf_counter()
            fn(start + i)
            times.append(time.perf_counter() - began)
        return times
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn(start + i)
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]


def median(values: list[float]) -> float:
    return statistics.median(values)


def environment_line() -> str:
    import datetime

    import triton

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return (f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | GPU {gpu} | torch "
            f"{torch.__version__} | triton {triton.__version__} | CUDA {torch.version.cuda}")


def source_commit() -> Optional[str]:
    """The checkout's commit (short hash, "-dirty" when tracked files differ from it), None outside a git checkout:
    results pooled over runs must come from one tree."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")
