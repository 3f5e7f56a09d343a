"""Pareto and throughput plots render from the bundled sample logs; frontier and parsing are right."""

import json
from pathlib import Path

import pytest

from tests.tasks.tiny_model import load_tool

plot = load_tool("plot_pareto")
SAMPLES = Path(__file__).resolve().parent / "sample_logs"
RUNS = ("mosaic-base", "bert-base", "mosaic-large")


def _png_size(path: Path) -> tuple:
    import matplotlib.image

    image = matplotlib.image.imread(str(path))
    return image.shape[:2]


def test_pareto_front_keeps_only_undominated_points():
    P = plot.Point
    points = [P("a", 1, 5.0), P("b", 2, 4.0), P("c", 3, 4.5), P("d", 4, 3.0), P("e", 4, 3.5)]
    assert [p.run for p in plot.pareto_front(points, higher_is_better=False)] == ["a", "b", "d"]
    assert [p.run for p in plot.pareto_front(points, higher_is_better=True)] == ["a"]
    scores = [P("x", 1, 70.0), P("y", 2, 75.0), P("z", 3, 74.0), P("w", 5, 80.0)]
    assert [p.run for p in plot.pareto_front(scores, higher_is_better=True)] == ["x", "y", "w"]


def test_loss_vs_time_renders_from_trainer_logs(tmp_path, capsys):
    out = tmp_path / "loss.png"
    args = [a for r in RUNS for a in ("--run", f"{r}={SAMPLES / r}")]
    assert plot.main(["pareto", *args, "--output", str(out)]) == 0
    height, width = _png_size(out)
    assert width > 600 and height > 400
    printed = capsys.readouterr().out
    assert "mosaic-base" in printed and "bert-base:" not in printed  # bert-base never on the frontier


def test_glue_vs_time_uses_run_time_and_finetune_scores(tmp_path, capsys):
    out = tmp_path / "glue.png"
    args = []
    for r in RUNS:
        args += ["--run", f"{r}={SAMPLES / r}", "--finetune", f"{r}={SAMPLES / r / 'glue_results.json'}"]
    assert plot.main(["pareto", *args, "--output", str(out)]) == 0
    assert out.stat().st_size > 10_000
    frontier = capsys.readouterr().out
    assert "mosaic-base" in frontier and "mosaic-large" in frontier and "bert-base:" not in frontier


def test_log_keys_are_configurable_and_wall_clock_is_made_relative(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "time_s": 10.0, "train/loss": 5.0}, {"step": 2, "time_s": 20.0, "valid/mlm_loss": 4.0}]))
    assert plot.log_series(log) == [(2, 20.0, 4.0)]
    assert plot.log_series(log, metric_key="train/loss") == [(1, 10.0, 5.0)]
    wall = tmp_path / "wall.jsonl"
    wall.write_text('{"step": 5, "time": 1000.0, "eval/loss": 3}\n{"step": 9, "time": 1060.0, "eval/loss": 2}\n')
    assert [t for _, t, _ in plot.log_series(wall)] == [0.0, 60.0]
    assert plot.run_time_at(wall, step=6) == 0.0 and plot.run_time_at(wall, step=None) == 60.0
    with pytest.raises(plot.PlotError, match=r"no line has metric key 'eval/acc'; keys present"):
        plot.log_series(log, metric_key="eval/acc")


def test_throughput_bars_from_bench_markdown_and_json(tmp_path):
    rows = plot.read_throughput(SAMPLES / "throughput.md", section="Ablation")
    assert [r["name"] for r in rows][:2] == ["all on", "no unpad"] and rows[1]["value"] == 263314.0
    assert len(plot.read_throughput(SAMPLES / "throughput.md")) == 7
    assert plot.main(["throughput", str(SAMPLES / "throughput.md"), "--section", "ablation", "--output",
                      str(tmp_path / "abl.png")]) == 0
    assert plot.main(["throughput", str(SAMPLES / "throughput.json"), "--output", str(tmp_path / "j.png")]) == 0
    assert _png_size(tmp_path / "j.png")[1] > 500
    assert plot.main(["throughput", str(SAMPLES / "throughput.md"), "--section", "nope", "--output",
                      str(tmp_path / "x.png")]) == 2


def test_finetune_point_is_timed_at_the_pretraining_step_of_its_model(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model": {}, "step": 100}))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"model_dir": str(model_dir), "glue_average": 70.0,
                                   "tasks": {"rte": {"score": 60.0}}}))
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "time": 1000.0 + 2 * s, "train/loss": 1.0})
                             for s in (0, 50, 100, 150)))
    assert plot.finetune_score(results) == (70.0, 100)
    assert plot.finetune_score(results, "task:rte") == (60.0, 100)
    assert plot.run_time_at(log, 100) == 200.0
    with pytest.raises(plot.PlotError, match="has no task 'cola'"):
        plot.finetune_score(results, "task:cola")


def test_panels_side_by_side_each_with_its_own_frontier(tmp_path):
    from megabert.study.plots import Panel, plot_pareto_panels

    P = plot.Point
    loss = {"a": [P("a", 60, 3.0), P("a", 120, 2.5)], "b": [P("b", 60, 3.5), P("b", 100, 2.4)]}
    score = {"a": [P("a", 60, 70.0), P("a", 120, 75.0)], "b": [P("b", 60, 72.0), P("b", 100, 71.0)]}
    out = tmp_path / "panels.png"
    fronts = plot_pareto_panels([Panel(loss, "loss", False), Panel(score, "score", True)], out, "minutes")
    assert [(p.run, p.time_s) for p in fronts[0]] == [("a", 60), ("b", 100)]
    assert [(p.run, p.time_s) for p in fronts[1]] == [("b", 60), ("a", 120)]
    height, width = _png_size(out)
    assert width >= 2 * 7 * 120 - 10 and height > 400  # two 7-inch panels at 120 dpi
    with pytest.raises(plot.PlotError, match="nothing to plot for 'score'"):
        plot_pareto_panels([Panel(loss, "loss", False), Panel({}, "score", True)], tmp_path / "x.png")
