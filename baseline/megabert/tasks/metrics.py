"""GLUE's metrics in numpy: accuracy, binary F1, Matthews correlation, Pearson and Spearman correlation.

Each metric takes predictions and references as 1-D arrays and returns a Python float. Classification metrics
take label indices; the correlations take real numbers. Degenerate inputs follow scikit-learn / scipy where
they define a value (MCC and F1 are 0.0 when undefined) and return nan for a constant correlation input.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _pair(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(predictions).reshape(-1), np.asarray(references).reshape(-1)
    if p.shape != r.shape:
        raise ValueError(f"predictions ({p.size}) and references ({r.size}) differ in length")
    if p.size == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return p, r


def accuracy(predictions, references) -> float:
    p, r = _pair(predictions, references)
    return float(np.mean(p == r))


def f1(predictions, references, positive: int = 1) -> float:
    """Binary F1 of the `positive` class: 2 TP / (2 TP + FP + FN); 0.0 when there are no positives at all."""
    p, r = _pair(predictions, references)
    tp = np.sum((p == positive) & (r == positive))
    fp = np.sum((p == positive) & (r != positive))
    fn = np.sum((p != positive) & (r == positive))
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else 0.0


def matthews_corrcoef(predictions, references) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K, as scikit-learn); 0.0 when undefined."""
    p, r = _pair(predictions, references)
    classes, encoded = np.unique(np.concatenate([r, p]), return_inverse=True)
    r_idx, p_idx = encoded[: r.size], encoded[r.size:]
    confusion = np.zeros((classes.size, classes.size), dtype=np.float64)
    np.add.at(confusion, (r_idx, p_idx), 1.0)  # [true, predicted]
    true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    cov_ytyp = correct * total - pred_counts @ true_counts
    cov_ypyp = total * total - pred_counts @ pred_counts
    cov_ytyt = total * total - true_counts @ true_counts
    denominator = np.sqrt(cov_ytyt * cov_ypyp)
    return float(cov_ytyp / denominator) if denominator > 0 else 0.0


def pearson(predictions, references) -> float:
    p, r = _pair(predictions, references)
    p, r = p.astype(np.float64), r.astype(np.float64)
    pc, rc = p - p.mean(), r - r.mean()
    denominator = np.sqrt(np.sum(pc * pc) * np.sum(rc * rc))
    return float(np.sum(pc * rc) / denominator) if denominator > 0 else float("nan")


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata's 'average')."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the average 1-based rank of that run.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def spearman(predictions, references) -> float:
    p, r = _pair(predictions, references)
    return pearson(rankdata(p), rankdata(r))


METRICS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}
"""Metric name (as used in task definitions and result tables) -> function(predictions, references)."""

REGRESSION_METRICS = ("pearson", "spearman")


def compute_metrics(names: list[str] | tuple[str, ...], predictions, references) -> dict[str, float]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(METRICS)}")
    return {name: METRICS[name](predictions, references) for name in names}
