"""Accuracy helpers: judge a low-precision kernel by its error relative to PyTorch's own error at that precision."""

from __future__ import annotations

import torch


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in fp64; NaN anywhere gives inf, so it never passes."""
    x64, ref64 = x.double(), ref.double()
    if not torch.isfinite(x64).all():
        return float("inf")
    return ((x64 - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()


def assert_close_to_reference(name: str, ours: torch.Tensor, torch_lowp: torch.Tensor, ref_fp32: torch.Tensor,
                              factor: float = 2.0, floor: float = 1e-3) -> None:
    """ours must be within `factor` x PyTorch's low-precision error (or `floor`) of the fp32 reference."""
    ours_err, torch_err = rel_error(ours, ref_fp32), rel_error(torch_lowp, ref_fp32)
    assert ours_err <= max(factor * torch_err, floor), (
        f"{name}: kernel error {ours_err:.2e} vs PyTorch low-precision error {torch_err:.2e}")
