"""Shipped GLUE recipes parse and follow MosaicBERT; results take the median over seeds and average GLUE."""

import pytest

from megabert.config import ConfigError
from megabert.tasks.glue import GLUE_TASKS
from megabert.tasks.recipe import glue_recipe, load_recipe
from megabert.tasks.results import markdown_table, summarize
from tests.tasks.tiny_model import REPO_ROOT

RECIPES = REPO_ROOT / "configs" / "glue"


def test_every_glue_task_has_a_recipe_in_mosaicberts_shape():
    assert sorted(p.stem for p in RECIPES.glob("*.json")) == sorted(GLUE_TASKS)
    for task in GLUE_TASKS:
        recipe = glue_recipe(task, RECIPES)
        assert recipe.task == task and recipe.seq_len == 256 and recipe.warmup_fraction == 0.06
        assert recipe.init_from == ("mnli" if task in ("rte", "mrpc", "stsb") else None)
    assert glue_recipe("rte", RECIPES).seeds == [19, 8364, 717, 10536, 90166]


def test_bad_recipe_is_named(tmp_path):
    (tmp_path / "x.json").write_text('{"task": "x", "lr": -1}')
    with pytest.raises(ConfigError, match="lr must be > 0"):
        load_recipe(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"task": "y", "epoch": 3}')
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_recipe(tmp_path / "y.json")


def _run(task, seed, metrics, glue=True):
    return {"task": task, "seed": seed, "metrics": metrics, "train_time_s": 1.0, "is_glue": glue}


def test_median_over_seeds_task_scores_and_partial_glue_average():
    results = [_run("rte", s, {"dev": {"accuracy": a}}) for s, a in [(1, 0.60), (2, 0.70), (3, 0.65)]]
    results += [_run("mnli", 1, {"matched": {"accuracy": 0.80}, "mismatched": {"accuracy": 0.82}})]
    results += [_run("mrpc", s, {"dev": {"accuracy": a, "f1": f}}) for s, a, f in [(1, .8, .9), (2, .7, .8)]]
    results += [_run("mine", 1, {"dev": {"accuracy": 0.5}}, glue=False)]
    summary = summarize(results)
    assert summary["tasks"]["rte"]["metrics"] == {"accuracy": 0.65} and summary["tasks"]["rte"]["seeds"] == [1, 2, 3]
    assert summary["tasks"]["mnli"]["score"] == pytest.approx(81.0)
    assert summary["tasks"]["mrpc"]["score"] == pytest.approx(100 * (0.75 + 0.85) / 2)
    assert summary["glue_average"] == pytest.approx((65.0 + 81.0 + 80.0) / 3)  # "mine" is not GLUE
    assert not summary["glue_complete"] and list(summary["tasks"]) == ["mnli", "mrpc", "rte", "mine"]
    table = markdown_table(summary)
    assert "GLUE average (partial: mnli, mrpc, rte)" in table and "| matched/accuracy | 80.00 |" in table


def test_optimizer_decay_is_decoupled_and_schedule_is_linear():
    import torch

    from megabert.tasks.finetune import decoupled_adamw, linear_schedule
    from megabert.tasks.recipe import Recipe

    recipe = Recipe(lr=1e-3, weight_decay=1e-2, warmup_fraction=0.1, final_lr_fraction=0.0)
    param = torch.nn.Parameter(torch.ones(3))
    model = torch.nn.Module()
    model.p = param
    optimizer = decoupled_adamw(model, recipe)
    schedule = linear_schedule(optimizer, total_steps=100, recipe=recipe)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.zeros(3)  # Adam's update is 0: only the weight decay moves the weights
        before = param.detach().clone()
        optimizer.step()
        schedule.step()
        # MosaicBERT's decoupled decay: w <- w * (1 - wd * lr_t / lr), independent of the lr's size
        torch.testing.assert_close(param.detach(), before * (1 - recipe.weight_decay * lrs[-1] / recipe.lr))
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and max(lrs) == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-3 / 90) and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_nan_correlation_counts_as_zero_in_the_median():
    results = [_run("stsb", s, {"dev": {"pearson": p, "spearman": 0.5}}) for s, p in
               [(1, float("nan")), (2, 0.8), (3, 0.9)]]
    assert summarize(results)["tasks"]["stsb"]["metrics"]["pearson"] == pytest.approx(0.8)
