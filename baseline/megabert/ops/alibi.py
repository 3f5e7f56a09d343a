"""ALiBi (Press et al., 2022): a per-head linear penalty on attention scores instead of position embeddings.

MosaicBERT uses the symmetric form for a bidirectional encoder: score(i, j) += -slope_h * |i - j|.
Only the per-head slopes are stored; kernels compute the bias from them, so no [S, S] table sits on the hot path.
The eager table builder below is for references, tests and the padded SDPA fallback.
"""

from __future__ import annotations

import math

import torch


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Per-head slopes [num_heads] (fp32), geometric as in Press et al.

    For a power of two n the slopes are 2^(-8/n), 2^(-16/n), ...; otherwise take the slopes of the closest
    smaller power of two and interleave every other slope of the next power of two (the paper's reference code).
    """
    if num_heads <= 0:
        raise ValueError(f"num_heads must be > 0, got {num_heads}")

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = power_of_two_slopes(num_heads)
    else:
        closest = 2 ** math.floor(math.log2(num_heads))
        slopes = power_of_two_slopes(closest) + power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, seq_len: int, device: torch.device | None = None) -> torch.Tensor:
    """Bias table [heads, seq_len, seq_len] = -slope * |i - j| in fp32 (reference and fallback use only)."""
    pos = torch.arange(seq_len, device=device)
    distance = (pos[None, :] - pos[:, None]).abs().float()  # [S, S]
    return -slopes.to(device=device, dtype=torch.float32)[:, None, None] * distance  # [heads, S, S]
