"""A study's report from its runs' files: one row per run, one ablation row per switch with the changes against
MosaicBERT, the Pareto frontier, and the figures (they render)."""

import json

import pytest

from megabert.study.report import write_report
from megabert.study.spec import SWITCHES, load_study
from tests.study.test_spec import BERT, write_study
from tests.tools.test_plot_pareto import _png_size

EVAL_META = {"samples": 64, "masked_tokens": 900, "masked_positions_sha256": "ab" * 32,
             "unigram": {"loss": 7.0, "accuracy": 0.06, "training_tokens_counted": 10},
             "settings": {"mask_prob": 0.15}}


def fake_run(run, tokens_per_s: float, wall_s: float, loss: float, accuracy: float, score=None,
             hardware=None) -> None:
    """What the stages leave in a run's directory."""
    run.directory.mkdir(parents=True, exist_ok=True)
    (run.directory / "pretrain.json").write_text(json.dumps(
        {"step": 100, "epochs": wall_s / 100, "budget_spent_seconds": wall_s, "budget_estimated_seconds": wall_s - 1,
         "loop_tokens_per_s": tokens_per_s, "stopped_by_signal": False,
         **({"hardware": hardware} if hardware else {})}))
    (run.directory / "evaluation.json").write_text(json.dumps(
        {"loss": loss, "accuracy": accuracy, "masked_positions_sha256": EVAL_META["masked_positions_sha256"]}))
    if score is not None:
        (run.directory / "downstream").mkdir(exist_ok=True)
        (run.directory / "downstream" / "results.json").write_text(json.dumps(
            {"tasks": {"debian_sections": {"score": score}}}))


@pytest.fixture
def study(tmp_path, sample_corpus):
    task = tmp_path / "task.tsv"
    task.write_text("package\tlabel\ttext\n")
    downstream = {"name": "debian_sections", "train_file": str(task), "dev_file": str(task)}
    return load_study(write_study(tmp_path, sample_corpus, budgets_minutes=[5, 10], ablation={"budget_minutes": 10},
                                  downstream=downstream))


def test_report_has_every_run_one_ablation_row_per_switch_and_the_frontier(study, tmp_path):
    by_id = {r.id: r for r in study.runs()}
    fake_run(by_id["mosaicbert/5min"], 1000.0, 300.0, 3.5, 0.40, 70.0)
    fake_run(by_id["mosaicbert/10min"], 1000.0, 600.0, 3.0, 0.45, 75.0)
    fake_run(by_id["bert/5min"], 800.0, 300.0, 6.9, 0.06, 50.0)  # on the unigram plateau
    fake_run(by_id["bert/10min"], 800.0, 610.0, 4.0, 0.30, 65.0)
    for i, switch in enumerate(SWITCHES):
        if switch.name != "mask_30":  # its run has not finished yet
            fake_run(by_id[f"mosaicbert-no-{switch.name.replace('_', '-')}/10min"], 1000.0 - 100 * i, 600.0,
                     3.0 + 0.1 * i, 0.45 - 0.01 * i, 75.0 - i)
    results = write_report(study, EVAL_META, failures={"mosaicbert-no-mask-30/10min": "StageError: boom"})

    out = study.output_dir
    for name in ("results.json", "results.md", "pareto.png", "ablation.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text()) == results
    assert [r["run"] for r in results["runs"]] == [r.id for r in study.runs()]
    rows = {r["run"]: r for r in results["runs"]}
    assert rows["bert/5min"]["on_unigram_plateau"] and not rows["bert/10min"]["on_unigram_plateau"]
    assert rows["mosaicbert-no-mask-30/10min"]["status"] == "failed" and rows["mosaicbert/5min"]["status"] == "done"

    ablation = results["ablation"]
    assert [a["switch"] for a in ablation] == [s.name for s in SWITCHES]  # one row per switch, missing ones too
    geglu = ablation[1]
    assert geglu["throughput_change_pct"] == pytest.approx(-10.0)
    assert geglu["eval_loss_change"] == pytest.approx(0.1)
    assert geglu["eval_accuracy_change_pts"] == pytest.approx(-1.0)
    assert geglu["downstream_change_pts"] == pytest.approx(-1.0)
    assert ablation[-1]["throughput_change_pct"] is None and ablation[-1]["run"] == "mosaicbert-no-mask-30/10min"

    assert results["pareto_frontier"] == {"eval_loss": ["mosaicbert/5min", "mosaicbert/10min"],
                                          "downstream_score": ["mosaicbert/5min", "mosaicbert/10min"]}
    height, width = _png_size(out / "pareto.png")
    assert width > 1200 and height > 400  # two panels side by side
    text = (out / "results.md").read_text()
    assert "| BERT | 5min | 100 | 3.00 | 300.0 | 800 | 6.9000 | 6.00 | 50.00 | done, plateau |" in text
    assert "**1 run(s) never left the unigram plateau**: bert/5min." in text  # a comparison run that learned nothing
    assert "| geglu | GELU MLP | 900 | -10.0% | +0.1000 | -1.00 | -1.00 |" in text
    assert "| mask_30 | 15% masking | - | - | - | - | - |" in text
    assert "*plateau*: that variant" not in text  # every finished ablation run learned
    assert "![pareto.png](pareto.png)" in text


def test_runs_on_different_hardware_are_named_with_a_warning_and_one_kind_gets_one_line(study):
    by_id = {r.id: r for r in study.runs()}
    h100, h200 = "1 x NVIDIA H100 80GB HBM3", "1 x NVIDIA H200"
    fake_run(by_id["mosaicbert/5min"], 1000.0, 300.0, 3.5, 0.40, 70.0, hardware=h100)
    fake_run(by_id["bert/5min"], 800.0, 300.0, 4.9, 0.20, 50.0, hardware=h100)
    fake_run(by_id["mosaicbert/10min"], 1000.0, 600.0, 3.0, 0.45, 75.0)  # finished before runs recorded theirs
    results = write_report(study, EVAL_META)
    assert results["hardware"] == {h100: ["mosaicbert/5min", "bert/5min"]}
    assert "Hardware: 1 x NVIDIA H100 80GB HBM3, for all 2 run(s) that recorded theirs; 1 finished run(s) recorded " \
           "none." in (study.output_dir / "results.md").read_text()

    fake_run(by_id["bert/10min"], 1100.0, 600.0, 4.0, 0.30, 65.0, hardware=h200)
    results = write_report(study, EVAL_META)
    assert results["hardware"] == {h100: ["mosaicbert/5min", "bert/5min"], h200: ["bert/10min"]}  # largest first
    text = (study.output_dir / "results.md").read_text()
    assert "**The runs trained on different hardware**" in text
    assert f"{h100}: mosaicbert/5min, bert/5min; {h200}: bert/10min; 1 finished run(s) recorded none." in text


def test_report_of_a_study_with_nothing_finished_yet(study):
    results = write_report(study, EVAL_META)
    assert {r["status"] for r in results["runs"]} == {"pending"}
    assert len(results["ablation"]) == len(SWITCHES) and results["pareto_frontier"] == {}
    assert results["figures"] == [] and (study.output_dir / "results.md").is_file()


def test_plot_pareto_redraws_a_study_from_its_results(study, tmp_path, capsys):
    from tests.tasks.tiny_model import load_tool

    by_id = {r.id: r for r in study.runs()}
    fake_run(by_id["mosaicbert/5min"], 1000.0, 300.0, 3.5, 0.40)
    fake_run(by_id["bert/5min"], 800.0, 280.0, 6.0, 0.10)
    write_report(study, EVAL_META)
    plot = load_tool("plot_pareto")
    out = tmp_path / "again.png"
    assert plot.main(["study", str(study.output_dir / "results.json"), "--output", str(out)]) == 0
    assert _png_size(out)[1] > 600
    assert "bert/5min" in capsys.readouterr().out
    assert plot.main(["study", str(tmp_path / "none.json"), "--output", str(out)]) == 2


def _recipe_sweep(tmp_path, sample_corpus):
    """MosaicBERT at three lrs (the base config's 2e-3, 1e-4, 2e-4), BERT over two lrs at 15% and one at 30% masking
    (one model, two recipes of masking); five runs finished, bert-lr=0.0002 still to run."""
    sweeps = [{"name": "MosaicBERT", "role": "variant", "grid": {"optim.lr": [1e-4, 2e-4]}},
              {"name": "BERT", "role": "baseline", "overrides": BERT, "grid": {"optim.lr": [1e-4, 2e-4]}},
              {"name": "BERT 30%", "role": "baseline", "overrides": {**BERT, "data.mask_prob": 0.3},
               "grid": {"optim.lr": [1e-4]}}]
    study = load_study(write_study(tmp_path, sample_corpus, budgets_minutes=[3], sweeps=sweeps,
                                   variants=[{"name": "MosaicBERT", "role": "mosaicbert"}]))
    by_id = {r.id: r for r in study.runs()}
    assert set(by_id) == {"mosaicbert/3min", "mosaicbert-lr=0.0001/3min", "mosaicbert-lr=0.0002/3min",
                          "bert-lr=0.0001/3min", "bert-lr=0.0002/3min", "bert-30-lr=0.0001/3min"}
    fake_run(by_id["mosaicbert/3min"], 1000.0, 180.0, 6.9, 0.05)  # on the plateau (unigram 7.0): never chosen
    fake_run(by_id["mosaicbert-lr=0.0001/3min"], 1000.0, 180.0, 3.7, 0.41)
    fake_run(by_id["mosaicbert-lr=0.0002/3min"], 1000.0, 180.0, 3.9, 0.39)
    fake_run(by_id["bert-lr=0.0001/3min"], 800.0, 180.0, 6.95, 0.05)
    fake_run(by_id["bert-30-lr=0.0001/3min"], 800.0, 180.0, 5.5, 0.2)
    return study, by_id


def test_recipe_choice_per_model_is_the_lowest_loss_off_the_plateau_at_the_smallest_budget(tmp_path, sample_corpus):
    study, by_id = _recipe_sweep(tmp_path, sample_corpus)
    results = write_report(study, EVAL_META)

    choices = {c["model"]: c for c in results["recipe_choices"]}
    assert set(choices) == {"MosaicBERT", "BERT"}
    assert choices["MosaicBERT"]["chosen"] == "mosaicbert-lr=0.0001/3min"
    assert choices["MosaicBERT"]["overrides"] == {"optim.lr": 1e-4} and choices["MosaicBERT"]["left_plateau"] == 2
    bert = choices["BERT"]
    assert bert["chosen"] == "bert-30-lr=0.0001/3min" and bert["finished"] == 2 and len(bert["runs"]) == 3
    assert bert["overrides"]["data.mask_prob"] == 0.3 and bert["overrides"]["optim.lr"] == 1e-4
    text = (study.output_dir / "results.md").read_text()
    assert "## Recipe choice" in text
    assert "never left the unigram plateau" not in text  # a sweep's runs may sit there: its choice passes them over
    assert results["head_to_head"] == [] and "## MosaicBERT against" not in text  # a sweep's runs are recipes
    assert "| BERT | 3min | 2 of 3 | 1 | - | bert-30-lr=0.0001/3min (provisional: runs still to finish) | 5.5000 |" in text

    fake_run(by_id["bert-30-lr=0.0001/3min"], 800.0, 180.0, 6.99, 0.05)  # now every finished BERT run is stuck
    assert {c["model"]: c["chosen"] for c in write_report(study, EVAL_META)["recipe_choices"]}["BERT"] is None
    assert "none: every finished run is on the plateau" in (study.output_dir / "results.md").read_text()


def test_recipe_choice_names_the_swept_settings_whose_chosen_value_is_the_smallest_or_largest_tried(
        tmp_path, sample_corpus):
    study, by_id = _recipe_sweep(tmp_path, sample_corpus)
    choices = {c["model"]: c for c in write_report(study, EVAL_META)["recipe_choices"]}
    # lr 1e-4 is the smallest MosaicBERT tries (the base config's 2e-3 counts); 30% the largest masking BERT tries
    assert choices["MosaicBERT"]["at_edge"] == [{"setting": "optim.lr", "value": 1e-4, "side": "smallest"}]
    assert choices["BERT"]["at_edge"] == [{"setting": "data.mask_prob", "value": 0.3, "side": "largest"},
                                          {"setting": "optim.lr", "value": 1e-4, "side": "smallest"}]
    assert "| optim.lr 0.0001 (smallest tried) |" in (study.output_dir / "results.md").read_text()

    fake_run(by_id["mosaicbert/3min"], 1000.0, 180.0, 4.5, 0.3)  # the base config's 2e-3 learns too: no collapse
    fake_run(by_id["mosaicbert-lr=0.0002/3min"], 1000.0, 180.0, 3.6, 0.42)  # inside the range (1e-4 .. 2e-3)
    choices = {c["model"]: c for c in write_report(study, EVAL_META)["recipe_choices"]}
    assert choices["MosaicBERT"]["chosen"] == "mosaicbert-lr=0.0002/3min" and choices["MosaicBERT"]["at_edge"] == []


def test_recipe_choice_keeps_a_step_from_a_collapse_the_best_run_below_a_collapsed_lr_is_left_out(
        tmp_path, sample_corpus):
    """At one lr step below a run that collapsed onto the unigram plateau, a rerun of the same recipe can collapse
    too: such a run is passed over for the best run whose next larger lr (other settings the same) learned."""
    study, by_id = _recipe_sweep(tmp_path, sample_corpus)
    fake_run(by_id["mosaicbert-lr=0.0002/3min"], 1000.0, 180.0, 3.5, 0.43)  # the best, but 2e-3 above it collapsed
    choices = {c["model"]: c for c in write_report(study, EVAL_META)["recipe_choices"]}
    mosaic = choices["MosaicBERT"]
    assert mosaic["chosen"] == "mosaicbert-lr=0.0001/3min" and mosaic["margin"] is True
    assert mosaic["below_collapse"] == {"mosaicbert-lr=0.0002/3min": "mosaicbert/3min"}
    # BERT's 1e-4 at 15% masking sat on the plateau itself; its 30%-masking recipe has no larger lr tried: kept
    assert choices["BERT"]["chosen"] == "bert-30-lr=0.0001/3min" and choices["BERT"]["below_collapse"] == {}
    text = (study.output_dir / "results.md").read_text()
    assert "| MosaicBERT | 3min | 3 of 3 | 2 | mosaicbert-lr=0.0002/3min | mosaicbert-lr=0.0001/3min | 3.7000 |" in text

    fake_run(by_id["bert-lr=0.0001/3min"], 800.0, 180.0, 5.2, 0.22)  # learns, best of BERT; 2e-4 above: pending
    assert {c["model"]: c["chosen"] for c in write_report(study, EVAL_META)["recipe_choices"]}["BERT"] == \
        "bert-lr=0.0001/3min"
    fake_run(by_id["bert-lr=0.0002/3min"], 800.0, 180.0, 6.99, 0.05)  # ... then collapses: 1e-4 loses its margin
    bert = {c["model"]: c for c in write_report(study, EVAL_META)["recipe_choices"]}["BERT"]
    assert bert["chosen"] == "bert-30-lr=0.0001/3min" and bert["below_collapse"] == {
        "bert-lr=0.0001/3min": "bert-lr=0.0002/3min"}

    fake_run(by_id["mosaicbert-lr=0.0001/3min"], 1000.0, 180.0, 6.9, 0.05)  # only 2e-4 learned: no margin anywhere
    mosaic = {c["model"]: c for c in write_report(study, EVAL_META)["recipe_choices"]}["MosaicBERT"]
    assert mosaic["chosen"] == "mosaicbert-lr=0.0002/3min" and mosaic["margin"] is False
    assert "(no margin: every run that learned is one lr step below a collapse" in (
        study.output_dir / "results.md").read_text()


def test_an_ablation_run_on_the_plateau_shows_no_quality_change_but_keeps_its_throughput(study):
    by_id = {r.id: r for r in study.runs()}
    fake_run(by_id["mosaicbert/10min"], 1000.0, 600.0, 3.0, 0.45, 75.0)
    fake_run(by_id["mosaicbert-no-geglu/10min"], 1200.0, 600.0, 6.9, 0.05, 10.0)  # collapsed: above 0.95 x 7.0
    fake_run(by_id["mosaicbert-no-alibi/10min"], 990.0, 600.0, 3.2, 0.43, 74.0)
    results = write_report(study, EVAL_META)
    ablation = {a["switch"]: a for a in results["ablation"]}
    assert ablation["geglu"]["on_unigram_plateau"] and ablation["geglu"]["eval_loss_change"] == pytest.approx(3.9)
    assert ablation["alibi"]["on_unigram_plateau"] is False
    text = (study.output_dir / "results.md").read_text()
    assert "| geglu | GELU MLP | 1,200 | +20.0% | *plateau* | *plateau* | *plateau* |" in text
    assert "| alibi | learned position embeddings | 990 | -1.0% | +0.2000 | -2.00 | -1.00 |" in text
    assert "*plateau*: that variant never left the unigram plateau at MosaicBERT's recipe." in text


def test_the_ablation_figure_puts_each_switchs_speed_beside_its_loss_and_marks_the_plateau(tmp_path):
    from megabert.study.plots import PlotError, plot_ablation

    rows = [{"name": "MosaicBERT", "tokens_per_s": 1000.0, "eval_loss": 3.0, "on_unigram_plateau": False},
            {"name": "no geglu", "tokens_per_s": 1200.0, "eval_loss": 6.9, "on_unigram_plateau": True},
            {"name": "no alibi", "tokens_per_s": 990.0, "eval_loss": None, "on_unigram_plateau": None}]
    labels = plot_ablation(rows, tmp_path / "ablation.png", reference="MosaicBERT")
    assert labels == {"tokens_per_s": ["1,000", "1,200 (+20.0%)", "990 (-1.0%)"],
                      "eval_loss": ["3.000", "6.900 (+3.900), plateau", "n/a"]}
    height, width = _png_size(tmp_path / "ablation.png")
    assert width > 1200 and height > 300  # two panels side by side
    with pytest.raises(PlotError, match="no run at its budget"):
        plot_ablation([], tmp_path / "none.png", reference="MosaicBERT")


def test_head_to_head_compares_mosaicbert_with_the_baseline_at_each_budget_and_names_no_winner_off_a_plateau(study):
    by_id = {r.id: r for r in study.runs()}
    fake_run(by_id["mosaicbert/5min"], 1000.0, 302.0, 3.5, 0.40, 70.0)
    fake_run(by_id["bert/5min"], 800.0, 299.0, 6.9, 0.06, 50.0)  # on the unigram plateau (0.95 x 7.0 = 6.65)
    fake_run(by_id["mosaicbert/10min"], 1000.0, 601.0, 3.0, 0.45, 75.0)
    fake_run(by_id["bert/10min"], 800.0, 598.0, 4.0, 0.30, 77.0)
    pairs = {p["budget_minutes"]: p for p in write_report(study, EVAL_META)["head_to_head"]}
    assert sorted(pairs) == [5, 10]
    ten = pairs[10]
    assert (ten["mosaicbert"], ten["baseline"]) == ("mosaicbert/10min", "bert/10min")
    assert ten["eval_loss_change"] == pytest.approx(-1.0)  # MosaicBERT minus BERT: MosaicBERT ahead
    assert ten["eval_accuracy_change_pts"] == pytest.approx(15.0)
    assert ten["downstream_change_pts"] == pytest.approx(-2.0)  # BERT ahead downstream, kept as measured
    assert ten["lower_eval_loss"] == "MosaicBERT" and ten["wall_clock_s"] == [601.0, 598.0]
    assert pairs[5]["lower_eval_loss"] is None and pairs[5]["on_unigram_plateau"] == ["bert/5min"]
    text = (study.output_dir / "results.md").read_text()
    assert "## MosaicBERT against BERT at each budget" in text
    assert "| 10min | 3.0000 / 4.0000 | -1.0000 | +15.00 | -2.00 | 601.0 / 598.0 | MosaicBERT |" in text
    assert "| 5min | 3.5000 / 6.9000 | -3.4000 | +34.00 | +20.00 | 302.0 / 299.0 | none: bert/5min on the plateau |" \
        in text

    fake_run(by_id["bert/10min"], 800.0, 598.0, 2.9, 0.50, 80.0)  # the baseline ahead: it is named the winner
    pairs = {p["budget_minutes"]: p for p in write_report(study, EVAL_META)["head_to_head"]}
    assert pairs[10]["lower_eval_loss"] == "BERT" and pairs[10]["eval_loss_change"] == pytest.approx(0.1)


def test_every_ablation_row_shows_no_quality_change_when_mosaicbert_itself_sat_on_the_plateau(study):
    by_id = {r.id: r for r in study.runs()}
    fake_run(by_id["mosaicbert/10min"], 1000.0, 600.0, 6.9, 0.05, 10.0)  # the reference collapsed
    fake_run(by_id["mosaicbert-no-alibi/10min"], 990.0, 600.0, 3.2, 0.43, 74.0)
    results = write_report(study, EVAL_META)
    alibi = next(a for a in results["ablation"] if a["switch"] == "alibi")
    assert alibi["reference_on_unigram_plateau"] and alibi["on_unigram_plateau"] is False
    assert alibi["eval_loss_change"] == pytest.approx(-3.7)  # kept raw in results.json
    text = (study.output_dir / "results.md").read_text()
    assert "| alibi | learned position embeddings | 990 | -1.0% | *plateau* | *plateau* | *plateau* |" in text
    assert "*plateau*: MosaicBERT's own run at this budget never left the unigram plateau" in text
