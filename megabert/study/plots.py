"""The paper's figures: quality against training time with the Pareto frontier marked, throughput bars, and the
ablation (throughput and validation loss of each variant beside MosaicBERT's).

The drawing behind tools/plot_pareto.py (which reads trainer logs and fine-tuning results into points) and behind
a study's report (megabert/study/report.py): one implementation of the frontier and of each figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

TIME_UNITS = {"seconds": 1.0, "minutes": 60.0, "hours": 3600.0}


class PlotError(ValueError):
    """Inputs cannot be plotted; the message names the file and the key."""


@dataclass
class Point:
    run: str
    time_s: float
    value: float
    label: str = ""


@dataclass
class Panel:
    """One chart of a figure: curves (name -> points), what the y axis is, and which way is better."""

    series: dict
    ylabel: str
    higher_is_better: bool
    title: str = ""


def pareto_front(points: list[Point], higher_is_better: bool) -> list[Point]:
    """Points no other point beats on both time (lower) and value: sweep by time, keep strict improvements."""
    front, best = [], None
    for p in sorted(points, key=lambda p: (p.time_s, -p.value if higher_is_better else p.value)):
        if best is None or (p.value > best if higher_is_better else p.value < best):
            front.append(p)
            best = p.value
    return front


def pyplot():
    """matplotlib's pyplot on the file-only backend, or a PlotError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise PlotError("plotting needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _write(fig, output: str | Path, title: str = "") -> None:
    """The figure's title and layout, then the PNG (its folder made if missing)."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)


def draw_pareto(ax, panel: Panel, time_unit: str = "hours") -> list[Point]:
    """One panel: a curve per series, the frontier as a dashed step line with its points circled."""
    scale = TIME_UNITS[time_unit]
    all_points = [p for points in panel.series.values() for p in points]
    if not all_points:
        raise PlotError(f"nothing to plot for {panel.ylabel!r}: no run has the metric")
    front = pareto_front(all_points, panel.higher_is_better)
    for name, points in panel.series.items():
        points = sorted(points, key=lambda p: p.time_s)
        ax.plot([p.time_s / scale for p in points], [p.value for p in points], marker="o", markersize=3,
                linewidth=1.2, alpha=0.8, label=name)
    ax.step([p.time_s / scale for p in front], [p.value for p in front], where="post", color="black",
            linestyle="--", linewidth=1.5, label="Pareto frontier")
    ax.scatter([p.time_s / scale for p in front], [p.value for p in front], s=40, facecolors="none",
               edgecolors="black", zorder=3)
    ax.set_xlabel(f"training time ({time_unit})")
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title or f"{panel.ylabel} vs training time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return front


def plot_pareto_panels(panels: Sequence[Panel], output: str | Path, time_unit: str = "hours",
                       title: str = "") -> list[list[Point]]:
    """Panels side by side in one PNG; returns each panel's frontier."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), dpi=120, squeeze=False)
    try:
        fronts = [draw_pareto(ax, panel, time_unit) for ax, panel in zip(axes[0], panels)]
        _write(fig, output, title)
    finally:
        plt.close(fig)
    return fronts


def plot_pareto(series: dict[str, list[Point]], output: str | Path, ylabel: str, higher_is_better: bool,
                time_unit: str = "hours", title: str = "") -> list[Point]:
    """One quality-vs-time chart with its frontier; returns the frontier."""
    return plot_pareto_panels([Panel(series, ylabel, higher_is_better, title)], output, time_unit)[0]


def plot_throughput(rows: list[dict], output: str | Path, ylabel: str = "real tokens/s", title: str = "") -> None:
    """Bars of rows {name, group, value}, grouped by `group` side by side."""
    plt = pyplot()
    names = list(dict.fromkeys(r["name"] for r in rows))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) * max(1, len(groups) / 2)), 4.5), dpi=120)
    for g, group in enumerate(groups):
        values = {r["name"]: r["value"] for r in rows if r["group"] == group}
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(xs, [values.get(n, 0.0) for n in names], width, label=group or None)
        ax.bar_label(bars, labels=[f"{values[n]:,.0f}" if n in values else "" for n in names], fontsize=7,
                     rotation=90, padding=2)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Throughput by configuration")
    ax.margins(y=0.2)
    if any(groups):
        ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    try:
        _write(fig, output)
    finally:
        plt.close(fig)


def plot_ablation(rows: list[dict], output: str | Path, reference: str, title: str = "") -> dict[str, list[str]]:
    """Two panels, one bar per variant: real tokens/s and validation MLM loss, with the reference variant's values
    as dashed lines, so that what each switch costs in speed sits beside what it costs in quality.

    rows: {name, tokens_per_s, eval_loss, on_unigram_plateau}; a None value leaves its bar out ("n/a"). A run on
    the unigram plateau is hatched and labelled: its loss says that it did not learn, not what the switch buys.
    Returns each panel's bar labels (key -> one label per row).
    """
    if not rows:
        raise PlotError("nothing to plot for the ablation: no run at its budget")
    plt = pyplot()
    names = [r["name"] for r in rows]
    ref = next((r for r in rows if r["name"] == reference), None)
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.5 * len(rows) + 2), dpi=120, sharey=True)
    labels = {}
    try:
        for ax, key, label in ((axes[0], "tokens_per_s", "real tokens/s"),
                               (axes[1], "eval_loss", "validation MLM loss (lower is better)")):
            values = [r.get(key) for r in rows]
            base = None if ref is None else ref.get(key)
            bars = ax.barh(range(len(rows)), [0.0 if v is None else v for v in values], color="tab:blue")
            texts = []
            for bar, row, value in zip(bars, rows, values):
                if value is None:
                    texts.append("n/a")
                    continue
                text = f"{value:,.0f}" if key == "tokens_per_s" else f"{value:.3f}"
                if base and row is not ref:
                    text += f" ({100 * (value / base - 1):+.1f}%)" if key == "tokens_per_s" else f" ({value - base:+.3f})"
                if key == "eval_loss" and row.get("on_unigram_plateau"):
                    bar.set(hatch="//", facecolor="lightgray", edgecolor="tab:gray")
                    text += ", plateau"
                texts.append(text)
            ax.bar_label(bars, labels=texts, fontsize=7, padding=3)
            labels[key] = texts
            if ref is not None and ref.get(key) is not None:
                ax.axvline(ref[key], color="black", linestyle="--", linewidth=1, label=reference)
                ax.legend(fontsize=8, loc="lower right")
            ax.set_xlabel(label)
            ax.locator_params(axis="x", nbins=4)  # room for seven-digit tick labels
            ax.xaxis.set_major_formatter("{x:,.0f}" if key == "tokens_per_s" else "{x:.1f}")
            ax.margins(x=0.5)  # room for the longest bar's label
            ax.grid(True, axis="x", alpha=0.3)
        axes[0].set_yticks(range(len(rows)), names, fontsize=8)
        axes[0].invert_yaxis()  # the first row on top
        _write(fig, output, title)
    finally:
        plt.close(fig)
    return labels
