"""Median over seeds, per-task scores, the GLUE average, and the tables (markdown and JSON).

A task's metrics are keyed 'accuracy' or, with several eval splits, 'matched/accuracy'. Its score is the mean
of its median metrics x 100 (GLUE: MNLI averages matched and mismatched, QQP/MRPC accuracy and F1, STS-B
Pearson and Spearman; a nan correlation, from constant predictions, counts as 0). The GLUE average is the
mean score over the GLUE tasks present; it is labelled a partial average unless all eight ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from megabert.tasks.glue import GLUE_TASKS


def flatten_metrics(metrics: dict) -> dict[str, float]:
    """{'dev': {'accuracy': .9}} -> {'accuracy': .9}; {'matched': {...}, 'mismatched': {...}} -> 'matched/...'."""
    if len(metrics) == 1:
        return dict(next(iter(metrics.values())))
    return {f"{split}/{name}": value for split, values in metrics.items() for name, value in values.items()}


def summarize(results: list[dict]) -> dict:
    """Groups run results by task; medians over seeds; scores; GLUE average."""
    by_task: dict[str, list[dict]] = {}
    for result in results:
        by_task.setdefault(result["task"], []).append(result)
    order = [t for t in GLUE_TASKS if t in by_task] + sorted(t for t in by_task if t not in GLUE_TASKS)
    tasks = {}
    for task in order:
        runs = sorted(by_task[task], key=lambda r: r["seed"])
        flat = [flatten_metrics(r["metrics"]) for r in runs]
        # nan (a correlation of constant predictions) counts as no correlation, so one seed cannot void a task.
        medians = {key: float(np.median(np.nan_to_num([f[key] for f in flat], nan=0.0))) for key in flat[0]}
        tasks[task] = {
            "metrics": medians,
            "score": 100.0 * float(np.mean(list(medians.values()))),
            "seeds": [r["seed"] for r in runs],
            "per_seed": [{"seed": r["seed"], **f} for r, f in zip(runs, flat)],
            "train_time_s": float(np.median([r["train_time_s"] for r in runs])),
            "is_glue": bool(runs[0].get("is_glue", task in GLUE_TASKS)),
        }
    glue_scores = [t["score"] for t in tasks.values() if t["is_glue"]]
    glue_present = [name for name, t in tasks.items() if t["is_glue"]]
    model_dirs = sorted({r["model_dir"] for r in results if r.get("model_dir")})
    return {
        "model_dir": model_dirs[0] if len(model_dirs) == 1 else model_dirs,
        "glue_average": float(np.mean(glue_scores)) if glue_scores else None,
        "glue_tasks": glue_present,
        "glue_complete": set(glue_present) == set(GLUE_TASKS),
        "tasks": tasks,
    }


def markdown_table(summary: dict) -> str:
    lines = ["| task | metric | median | per seed | seeds | score |", "|---|---|---|---|---|---|"]
    for task, entry in summary["tasks"].items():
        for i, (metric, value) in enumerate(entry["metrics"].items()):
            per_seed = ", ".join(f"{100 * run[metric]:.2f}" for run in entry["per_seed"])
            score = f"{entry['score']:.2f}" if i == 0 else ""
            lines.append(f"| {task if i == 0 else ''} | {metric} | {100 * value:.2f} | {per_seed} | "
                         f"{len(entry['seeds']) if i == 0 else ''} | {score} |")
    if summary["glue_average"] is not None:
        label = "GLUE average" if summary["glue_complete"] else \
            f"GLUE average (partial: {', '.join(summary['glue_tasks'])})"
        lines.append(f"| **{label}** | | | | | **{summary['glue_average']:.2f}** |")
    return "\n".join(lines) + "\n"


def write_results(summary: dict, output_dir: str | Path) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / "results.json", output_dir / "results.md"
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    md_path.write_text(markdown_table(summary))
    return json_path, md_path
