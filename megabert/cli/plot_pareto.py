"""Plots for the paper's figures: quality against training time with the Pareto frontier, and throughput bars.

MLM loss against pretraining time, one curve per run (the trainer's metrics.jsonl), frontier marked:
    python tools/plot_pareto.py pareto --run base=runs/base --run large=runs/large --output loss_vs_time.png

GLUE average against pretraining time (run_glue.py results.json per fine-tuned checkpoint; the time is read
from the run's log at the step recorded in the model dir, or taken as the log's last time):
    python tools/plot_pareto.py pareto --run base=runs/base --finetune base=runs/base/glue/results.json \\
        --finetune large=runs/large/glue/results.json --run large=runs/large --output glue_vs_time.png

Points given directly ([{"name", "time_s", "score"}], e.g. several checkpoints of one run):
    python tools/plot_pareto.py pareto --points points.json --higher-is-better --output pareto.png

A study's figure again (validation loss and downstream score against wall clock, from tools/run_study.py):
    python tools/plot_pareto.py study runs/study/base-h200/results.json --output pareto.png --time-unit minutes

Ablation throughput (tools/bench_throughput.py's markdown table, or JSON [{"name", "tokens_per_s"}]):
    python tools/plot_pareto.py throughput bench.md --output throughput.png

Log lines are JSON objects such as {"step": 100, "time": 1733000000.0, "train/loss": 2.1, "eval/loss": 2.3};
the metric and time keys are configurable (--metric-key, --time-key).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Optional


from megabert.study.plots import (PlotError, Point, pareto_front, plot_pareto, plot_pareto_panels,  # noqa: F401 -- re-exported
                                  plot_throughput)

METRIC_KEYS = ("eval/loss", "valid/mlm_loss", "valid/loss", "eval/mlm_loss")
"""Tried in order when --metric-key is not given."""
TIME_KEYS = ("time_s", "elapsed_seconds", "time")
"""Tried in order when --time-key is not given; a key named 'time' is a wall clock, made relative to the first
line of the log."""


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------


def _log_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"training log {path} not found (give a metrics.jsonl or the run directory holding it)")
    return path


def read_log(path: str | Path) -> list[dict]:
    records = []
    path = _log_path(path)
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise PlotError(f"{path}:{line_no}: not a JSON line ({e.msg})") from None
    if not records:
        raise PlotError(f"{path} is empty")
    return records


def _pick_key(records: list[dict], wanted: Optional[str], candidates: tuple, what: str, path) -> str:
    present = {k for r in records for k in r}
    if wanted:
        if wanted not in present:
            raise PlotError(f"{path}: no line has {what} key {wanted!r}; keys present: {sorted(present)}")
        return wanted
    for key in candidates:
        if key in present:
            return key
    raise PlotError(f"{path}: none of the {what} keys {list(candidates)} is present; pass --{what}-key "
                    f"(keys present: {sorted(present)})")


def log_series(path: str | Path, metric_key: Optional[str] = None, time_key: Optional[str] = None) -> list[tuple]:
    """(step, seconds since the start, metric value) for every log line that has the metric."""
    records = read_log(path)
    metric = _pick_key(records, metric_key, METRIC_KEYS, "metric", path)
    clock = _pick_key(records, time_key, TIME_KEYS, "time", path)
    start = min(r[clock] for r in records if clock in r) if clock == "time" else 0.0
    return [(r.get("step"), float(r[clock]) - start, float(r[metric])) for r in records
            if metric in r and clock in r]


def run_time_at(path: str | Path, step: Optional[int], time_key: Optional[str] = None) -> float:
    """Seconds of training when `step` was reached (the last logged time at or before it; None: the end)."""
    records = read_log(path)
    clock = _pick_key(records, time_key, TIME_KEYS, "time", path)
    timed = [r for r in records if clock in r]
    start = min(r[clock] for r in timed) if clock == "time" else 0.0
    if step is not None:
        timed = [r for r in timed if r.get("step") is not None and r["step"] <= step] or timed[:1]
    return float(max(r[clock] for r in timed)) - start


def finetune_score(results_path: str | Path, score_key: str = "glue_average") -> tuple[float, Optional[int]]:
    """The score in a run_glue results.json ('glue_average' or 'task:<name>') and the pretraining step of its
    model (from the model dir's config.json, when recorded)."""
    results_path = Path(results_path)
    if not results_path.is_file():
        raise PlotError(f"fine-tuning results {results_path} not found")
    summary = json.loads(results_path.read_text())
    if score_key.startswith("task:"):
        task = score_key.split(":", 1)[1]
        if task not in summary.get("tasks", {}):
            raise PlotError(f"{results_path} has no task {task!r}; it has {sorted(summary.get('tasks', {}))}")
        score = summary["tasks"][task]["score"]
    else:
        score = summary.get(score_key)
    if score is None:
        raise PlotError(f"{results_path} has no {score_key!r} (run GLUE tasks, or pass --score-key task:<name>)")
    step = None
    model_dir = summary.get("model_dir")
    if isinstance(model_dir, str) and (Path(model_dir) / "config.json").is_file():
        step = json.loads((Path(model_dir) / "config.json").read_text()).get("step")
    return float(score), step


def _named(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise PlotError(f"{flag} takes NAME=PATH, got {item!r}")
        out[name] = path
    return out


# ---------------------------------------------------------------------------------------------------------------
# Throughput bars
# ---------------------------------------------------------------------------------------------------------------


def _number(text: str) -> float:
    return float(re.sub(r"[,%x\s]", "", text))


def read_throughput(path: str | Path, value_key: str = "real_tokens_per_s", section: str = "") -> list[dict]:
    """Rows {name, group, value} from JSON [{"name", "tokens_per_s"}] / bench_throughput result dicts, or from
    bench_throughput.py's markdown tables (columns system, dist, tokens/s, real tokens/s); with `section`, only
    the table under the heading that contains it (e.g. 'Ablation')."""
    path = Path(path)
    if not path.is_file():
        raise PlotError(f"throughput table {path} not found")
    text = path.read_text()
    if path.suffix == ".json":
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise PlotError(f"{path}: expected a JSON list of {{'name', 'tokens_per_s'}} objects")
        out = []
        for i, row in enumerate(rows):
            name = row.get("name") or row.get("system")
            value = row.get(value_key, row.get("tokens_per_s"))
            if name is None or value is None:
                raise PlotError(f"{path}: entry {i} needs 'name' and 'tokens_per_s' (or {value_key!r})")
            out.append({"name": str(name), "group": str(row.get("dist", row.get("group", ""))), "value": float(value)})
        return out
    column = {"real_tokens_per_s": "real tokens/s", "tokens_per_s": "tokens/s"}.get(value_key, value_key)
    out, header, in_section = [], None, not section
    for line in text.splitlines():
        if not line.strip().startswith("|"):
            header = None
            if line.lstrip().startswith("#") and section:
                in_section = section.lower() in line.lower()
            continue
        if not in_section:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set(line.replace("|", "").strip()) <= set("-: "):
            continue
        row = dict(zip(header, cells))
        if column in row and ("system" in row or "name" in row):
            out.append({"name": row.get("system") or row["name"], "group": row.get("dist", ""),
                        "value": _number(row[column])})
    if not out:
        raise PlotError(f"{path}: no markdown table with a 'system' and a {column!r} column"
                        + (f" under a heading containing {section!r}" if section else ""))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def pareto_command(args: argparse.Namespace) -> int:
    runs = _named(args.run, "--run")
    finetunes = _named(args.finetune, "--finetune")
    series: dict[str, list[Point]] = {}
    if args.points:
        for i, p in enumerate(json.loads(Path(args.points).read_text())):
            try:
                series.setdefault(p["name"], []).append(Point(p["name"], float(p["time_s"]), float(p["score"])))
            except KeyError as e:
                raise PlotError(f"{args.points}: entry {i} lacks {e}; entries are {{name, time_s, score}}") from None
    for name, results in finetunes.items():
        if name not in runs and args.time_s is None:
            raise PlotError(f"--finetune {name}=... needs --run {name}=LOG for its training time")
        score, step = finetune_score(results, args.score_key)
        time_s = run_time_at(runs[name], step, args.time_key) if name in runs else args.time_s
        series.setdefault(name, []).append(Point(name, time_s, score, str(results)))
    fine_tuning = bool(finetunes or args.points)
    if not fine_tuning:
        for name, log in runs.items():
            series[name] = [Point(name, t, v) for _, t, v in log_series(log, args.metric_key, args.time_key)]
    higher = args.higher_is_better or (fine_tuning and not args.lower_is_better)
    ylabel = args.ylabel or ("GLUE average" if fine_tuning and args.score_key == "glue_average" else
                             args.score_key if fine_tuning else args.metric_key or "validation MLM loss")
    front = plot_pareto(series, args.output, ylabel, higher, args.time_unit, args.title)
    print(f"wrote {args.output}; Pareto frontier:")
    for p in front:
        print(f"  {p.run}: {p.time_s:.1f} s -> {p.value:.4f}")
    return 0


def study_command(args: argparse.Namespace) -> int:
    from megabert.study.report import pareto_panels

    path = Path(args.results)
    if not path.is_file():
        raise PlotError(f"study results {path} not found (tools/run_study.py writes results.json in output_dir)")
    try:
        runs = json.loads(path.read_text())["runs"]
    except (ValueError, KeyError):
        raise PlotError(f"{path} is not a study's results.json (no 'runs')") from None
    panels = pareto_panels(runs)
    if not panels:
        raise PlotError(f"{path}: no finished run has a validation loss yet")
    fronts = plot_pareto_panels(panels, args.output, args.time_unit, args.title)
    print(f"wrote {args.output}; Pareto frontier:")
    for panel, front in zip(panels, fronts):
        print(f"  {panel.ylabel}: " + ", ".join(f"{p.label} ({p.time_s:.0f} s, {p.value:.4f})" for p in front))
    return 0


def throughput_command(args: argparse.Namespace) -> int:
    rows = read_throughput(args.table, args.value, args.section)
    plot_throughput(rows, args.output, args.value.replace("_per_s", "/s").replace("_", " "), args.title)
    print(f"wrote {args.output} ({len(rows)} bars)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pareto", help="quality vs training time with the Pareto frontier")
    p.add_argument("--run", action="append", default=[], help="NAME=metrics.jsonl (or the run dir holding it)")
    p.add_argument("--finetune", action="append", default=[], help="NAME=results.json from tools/run_glue.py")
    p.add_argument("--points", help="JSON list of {name, time_s, score}")
    p.add_argument("--metric-key", help=f"log key plotted (default: first present of {', '.join(METRIC_KEYS)})")
    p.add_argument("--time-key", help=f"log time key (default: first present of {', '.join(TIME_KEYS)})")
    p.add_argument("--score-key", default="glue_average", help="'glue_average' or 'task:<name>'")
    p.add_argument("--time-s", type=float, help="training time for --finetune entries without a --run log")
    p.add_argument("--higher-is-better", action="store_true", help="(default for fine-tuning scores)")
    p.add_argument("--lower-is-better", action="store_true", help="(default for log metrics such as loss)")
    p.add_argument("--time-unit", default="hours", choices=("seconds", "minutes", "hours"))
    p.add_argument("--ylabel")
    p.add_argument("--title", default="")
    p.add_argument("--output", required=True, help="PNG to write")
    p.set_defaults(func=pareto_command)
    s = sub.add_parser("study", help="a study's validation loss and downstream score vs wall clock")
    s.add_argument("results", help="results.json of tools/run_study.py")
    s.add_argument("--time-unit", default="minutes", choices=("seconds", "minutes", "hours"))
    s.add_argument("--title", default="")
    s.add_argument("--output", required=True, help="PNG to write")
    s.set_defaults(func=study_command)
    t = sub.add_parser("throughput", help="ablation throughput table as a bar chart")
    t.add_argument("table", help="bench_throughput.py markdown output, or JSON [{name, tokens_per_s}]")
    t.add_argument("--value", default="real_tokens_per_s", help="real_tokens_per_s (default) or tokens_per_s")
    t.add_argument("--section", default="", help="only the markdown table under a heading containing this "
                   "(e.g. Ablation)")
    t.add_argument("--title", default="")
    t.add_argument("--output", required=True, help="PNG to write")
    t.set_defaults(func=throughput_command)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
