"""A study's results: one row per run, MosaicBERT against each baseline at each budget, the ablation table, the
Pareto figure; as results.json and results.md.

Wall clock of a run is its training loop's, as the budget counts it (megabert/train/budget.py: from the first step
to the last, evaluations and checkpoints between them included, start-up and export not). Throughput is the
trainer's real (non-padding) tokens per second after its first log window. The ablation compares each switched-off
variant with the MosaicBERT variant at the ablation's budget: the change of throughput (percent) and of validation
loss, validation accuracy and downstream score (points) that turning the switch off causes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Sequence

from megabert.config import field_value
from megabert.study.evaluation import PLATEAU_FRACTION
from megabert.study.plots import Panel, Point, pareto_front, plot_ablation, plot_pareto_panels
from megabert.study.runner import read_json
from megabert.study.spec import SWITCH_BY_NAME, Run, Study, budget_label

LR_KEY = "optim.lr"  # the setting whose next step up decides a recipe's margin from a collapse
PARETO_PNG = "pareto.png"
ABLATION_PNG = "ablation.png"


def run_row(study: Study, run: Run, eval_meta: dict, failures: dict[str, str]) -> dict[str, Any]:
    """What one run gave (None where a stage has not run)."""
    pretrain = read_json(run.directory / "pretrain.json") or {}
    evaluation = read_json(run.directory / "evaluation.json") or {}
    row = {"run": run.id, "variant": run.variant.name, "variant_id": run.variant.id, "role": run.variant.role,
           "switch": run.variant.switch, "budget_minutes": run.budget_minutes,
           "steps": pretrain.get("step"), "epochs": pretrain.get("epochs"),
           "wall_clock_s": pretrain.get("budget_spent_seconds"),
           "estimated_s": pretrain.get("budget_estimated_seconds"),
           "tokens_per_s": pretrain.get("loop_tokens_per_s", pretrain.get("run_tokens_per_s")),
           "eval_loss": evaluation.get("loss"), "eval_accuracy": evaluation.get("accuracy"),
           "masked_positions_sha256": evaluation.get("masked_positions_sha256"), "downstream_score": None,
           "hardware": pretrain.get("hardware")}
    if study.downstream:
        results = read_json(run.directory / "downstream" / "results.json") or {}
        task = results.get("tasks", {}).get(study.downstream.name)
        row["downstream_score"] = task["score"] if task else None
    unigram = (eval_meta.get("unigram") or {}).get("loss")
    row["on_unigram_plateau"] = (None if row["eval_loss"] is None or unigram is None
                                 else row["eval_loss"] > PLATEAU_FRACTION * unigram)
    done = row["eval_loss"] is not None and (not study.downstream or row["downstream_score"] is not None)
    row["status"] = "failed" if run.id in failures else "done" if done else "pending"
    if run.id in failures:
        row["error"] = failures[run.id]
    return row


def ablation_rows(study: Study, rows: Sequence[dict]) -> list[dict[str, Any]]:
    """One row per switch of the study's ablation, in the order of SWITCHES; changes are None while a run is
    missing. A run that sat on the unigram plateau keeps its changes here but is flagged: it did not learn at
    MosaicBERT's recipe, so its quality changes say that, not what the switch buys. The same holds for every row
    when MosaicBERT's own run at the budget sat there."""
    if study.ablation_budget is None:
        return []
    at_budget = [r for r in rows if r["budget_minutes"] == study.ablation_budget]
    reference = next((r for r in at_budget if r["role"] == "mosaicbert"), None)
    out = []
    for row in (r for r in at_budget if r["role"] == "ablation"):
        switch = SWITCH_BY_NAME[row["switch"]]
        entry = {"switch": switch.name, "key": switch.key, "off": switch.off, "description": switch.description,
                 "run": row["run"], "tokens_per_s": row["tokens_per_s"], "eval_loss": row["eval_loss"],
                 "eval_accuracy": row["eval_accuracy"], "downstream_score": row["downstream_score"]}
        entry["throughput_change_pct"] = _change(reference, row, "tokens_per_s", relative=True)
        entry["eval_loss_change"] = _change(reference, row, "eval_loss")
        entry["eval_accuracy_change_pts"] = _change(reference, row, "eval_accuracy", scale=100.0)
        entry["downstream_change_pts"] = _change(reference, row, "downstream_score")
        entry["on_unigram_plateau"] = row["on_unigram_plateau"]
        entry["reference_on_unigram_plateau"] = reference.get("on_unigram_plateau") if reference else None
        out.append(entry)
    order = list(SWITCH_BY_NAME)
    return sorted(out, key=lambda e: order.index(e["switch"]))


def head_to_head(study: Study, rows: Sequence[dict]) -> list[dict[str, Any]]:
    """The study's question, per budget: MosaicBERT (the 'mosaicbert' variant) against each 'baseline' variant at
    the same budget, as differences MosaicBERT minus baseline (a negative loss change: MosaicBERT is ahead). The
    Pareto frontier orders runs by their measured wall clock, in which runs of one budget differ by a second or
    two; this table compares them at the budget both were given. A pair where either run sat on the unigram
    plateau gets no winner: that run's recipe failed, so the pair says nothing about the models."""
    reference = study.reference
    if reference is None:
        return []
    by_key = {(r["variant_id"], r["budget_minutes"]): r for r in rows}
    out = []
    for budget in sorted(study.budgets_minutes):
        ours = by_key.get((reference.id, budget))
        for baseline in (v for v in study.variants if v.role == "baseline"):
            theirs = by_key.get((baseline.id, budget))
            if ours is None or theirs is None:
                continue
            entry = {"budget_minutes": budget, "mosaicbert": ours["run"], "baseline": theirs["run"],
                     "baseline_variant": baseline.name,
                     "eval_loss": [ours["eval_loss"], theirs["eval_loss"]],
                     "wall_clock_s": [ours["wall_clock_s"], theirs["wall_clock_s"]],
                     "eval_loss_change": _change(theirs, ours, "eval_loss"),
                     "eval_accuracy_change_pts": _change(theirs, ours, "eval_accuracy", scale=100.0),
                     "downstream_change_pts": _change(theirs, ours, "downstream_score")}
            stuck = [r["run"] for r in (ours, theirs) if r.get("on_unigram_plateau")]
            change = entry["eval_loss_change"]
            entry["lower_eval_loss"] = (None if stuck or change is None else "tie" if change == 0
                                        else reference.name if change < 0 else baseline.name)
            entry["on_unigram_plateau"] = stuck
            out.append(entry)
    return out


def _change(reference: Optional[dict], row: dict, key: str, relative: bool = False,
            scale: float = 1.0) -> Optional[float]:
    if reference is None or reference.get(key) is None or row.get(key) is None:
        return None
    if relative:
        return 100.0 * (row[key] / reference[key] - 1.0) if reference[key] else None
    return scale * (row[key] - reference[key])


def recipe_choices(study: Study, rows: Sequence[dict]) -> list[dict[str, Any]]:
    """The sweep's decision, per model: among a study's runs at its smallest budget (ablation runs left out),
    grouped by architecture (the resolved config's model section, so BERT at 15% and at 30% masking is one model),
    the run with the lowest validation loss that left the unigram plateau and keeps a step's margin from a collapse:
    a run whose next larger lr (every other swept setting the same) sat on the plateau is left out, because at one
    step below such a cliff a rerun of the very same recipe can collapse too (docs/STUDY.md has the repeats). Only
    when every run that learned is so left out is the best of them chosen, flagged `margin` false. Only models with
    two or more runs (a sweep) get a choice; it is provisional while any of them is still to run."""
    smallest = min(study.budgets_minutes, default=None)
    runs = {r.id: r for r in study.runs()}
    configs = {row["run"]: study.run_config(runs[row["run"]]) for row in rows
               if row["role"] != "ablation" and row["budget_minutes"] == smallest}
    groups: dict[str, list[dict]] = {}
    for row in (r for r in rows if r["run"] in configs):
        model = configs[row["run"]].model
        groups.setdefault(json.dumps(dataclasses.asdict(model), sort_keys=True, default=str), []).append(row)
    choices = []
    for members in groups.values():
        if len(members) < 2:
            continue
        learned = [r for r in members if r["eval_loss"] is not None and r.get("on_unigram_plateau") is False]
        collapsed_above = {r["run"]: _collapsed_above(r, members, configs, runs) for r in learned}
        with_margin = [r for r in learned if collapsed_above[r["run"]] is None]
        best = min(with_margin or learned, key=lambda r: r["eval_loss"], default=None)
        names = [r["variant"].split() for r in members]
        common = [w for i, w in enumerate(names[0]) if all(len(n) > i and n[i] == w for n in names)]
        choices.append({"model": " ".join(common) or members[0]["variant"], "budget_minutes": smallest,
                        "runs": [r["run"] for r in members],
                        "finished": sum(r["eval_loss"] is not None for r in members),
                        "left_plateau": len(learned), "chosen": best["run"] if best else None,
                        "below_collapse": {run: above for run, above in collapsed_above.items() if above},
                        "margin": bool(with_margin) if best else None,
                        "eval_loss": best["eval_loss"] if best else None,
                        "overrides": runs[best["run"]].variant.overrides if best else None,
                        "at_edge": _at_edge([runs[r["run"]] for r in members], runs[best["run"]], configs)
                        if best else []})
    return choices


def _collapsed_above(row: dict, members: Sequence[dict], configs: dict[str, Any],
                     runs: dict[str, Run]) -> Optional[str]:
    """The run one lr step above `row`'s -- the smallest larger lr among the model's runs whose other swept settings
    (any key a member overrides) resolve to `row`'s -- when it finished on the unigram plateau; else None."""
    keys = sorted({k for r in members for k in runs[r["run"]].variant.overrides} - {LR_KEY})

    def recipe(run_id: str) -> list:
        return [field_value(configs[run_id], k) for k in keys]

    lr = field_value(configs[row["run"]], LR_KEY)
    above = [r for r in members if recipe(r["run"]) == recipe(row["run"])
             and field_value(configs[r["run"]], LR_KEY) > lr]
    step_up = min(above, key=lambda r: field_value(configs[r["run"]], LR_KEY), default=None)
    return step_up["run"] if step_up is not None and step_up.get("on_unigram_plateau") is True else None


def _at_edge(members: Sequence[Run], chosen: Run, configs: dict[str, Any]) -> list[dict[str, Any]]:
    """The swept numeric settings (any key a member overrides) whose chosen value is the smallest or the largest
    that the model's runs try: the best recipe may then lie beyond the sweep's range, which should grow that way
    before the choice is trusted. Values are the resolved configs' (`configs`, by run id), so a run that keeps the
    base config's value counts with it."""
    edges = []
    for key in sorted({k for run in members for k in run.variant.overrides}):
        values = {run.id: field_value(configs[run.id], key) for run in members}
        numbers = [v for v in values.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        value = values[chosen.id]
        if len(set(numbers)) < 2 or value not in numbers:
            continue
        if value in (min(numbers), max(numbers)):
            edges.append({"setting": key, "value": value, "side": "smallest" if value == min(numbers) else "largest"})
    return edges


def pareto_panels(rows: Sequence[dict]) -> list[Panel]:
    """Validation loss and (when any run has one) downstream score against wall clock, one curve per variant
    (the ablation's single points left to the ablation table)."""
    def series(key: str) -> dict[str, list[Point]]:
        out: dict[str, list[Point]] = {}
        for r in rows:
            if r["role"] != "ablation" and r.get(key) is not None and r.get("wall_clock_s") is not None:
                out.setdefault(r["variant"], []).append(Point(r["variant"], r["wall_clock_s"], r[key], r["run"]))
        return out

    panels = [Panel(series("eval_loss"), "validation MLM loss (15% masking)", higher_is_better=False)]
    downstream = series("downstream_score")
    if downstream:
        panels.append(Panel(downstream, "downstream score", higher_is_better=True))
    return [p for p in panels if p.series]


def hardware_groups(rows: Sequence[dict]) -> dict[str, list[str]]:
    """{hardware: [run ids]} over the runs that recorded what they trained on, largest group first. More than one
    group means the budgets did not buy the same compute for every run: the wall-clock comparison is unfair."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        if row.get("hardware"):
            groups.setdefault(row["hardware"], []).append(row["run"])
    return dict(sorted(groups.items(), key=lambda item: -len(item[1])))


def collect(study: Study, eval_meta: dict, failures: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """results.json's content, from the files of the study's runs."""
    failures = failures or {}
    rows = [run_row(study, run, eval_meta, failures) for run in study.runs()]
    choices = recipe_choices(study, rows)
    fronts = {}
    for panel in pareto_panels(rows):
        key = "eval_loss" if not panel.higher_is_better else "downstream_score"
        fronts[key] = [p.label for p in pareto_front([p for s in panel.series.values() for p in s],
                                                     panel.higher_is_better)]
    return {"study": study.name, "description": study.description, "source": study.source,
            "budgets_minutes": study.budgets_minutes, "ablation_budget_minutes": study.ablation_budget,
            "evaluation": {k: eval_meta.get(k) for k in ("samples", "masked_tokens", "masked_positions_sha256",
                                                        "unigram", "settings")},
            "downstream": study.downstream.name if study.downstream else None,
            "hardware": hardware_groups(rows), "runs": rows,
            "head_to_head": [] if choices else head_to_head(study, rows),  # a sweep's runs are recipes, not rivals
            "ablation": ablation_rows(study, rows), "recipe_choices": choices, "pareto_frontier": fronts}


def write_report(study: Study, eval_meta: dict, failures: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """results.json, results.md, pareto.png (and ablation.png) in the study's directory; returns the results."""
    results = collect(study, eval_meta, failures)
    out = study.output_dir
    out.mkdir(parents=True, exist_ok=True)
    panels = pareto_panels(results["runs"])
    if panels:
        plot_pareto_panels(panels, out / PARETO_PNG, time_unit="minutes", title=f"study {study.name}")
    at_budget = [r for r in results["runs"] if r["budget_minutes"] == study.ablation_budget
                 and r["role"] in ("mosaicbert", "ablation") and r["tokens_per_s"] is not None]
    if study.ablation_budget is not None and at_budget:
        reference = next((r["variant"] for r in at_budget if r["role"] == "mosaicbert"), "")
        bars = [{"name": r["variant"], "tokens_per_s": r["tokens_per_s"], "eval_loss": r["eval_loss"],
                 "on_unigram_plateau": r["on_unigram_plateau"]} for r in at_budget]
        plot_ablation(bars, out / ABLATION_PNG, reference,
                      title=f"ablation at {budget_label(study.ablation_budget)}: each modification off in turn")
    results["figures"] = [name for name in (PARETO_PNG, ABLATION_PNG) if (out / name).is_file()]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    return results


# ---------------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".4f", signed: bool = False) -> str:
    if value is None:
        return "-"
    return format(value, ("+" if signed else "") + spec)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def _hardware_lines(groups: dict[str, list[str]], rows: Sequence[dict]) -> list[str]:
    """What the runs trained on; a warning when it was not the same for all of them."""
    if not groups:
        return []
    unrecorded = sum(1 for r in rows if r["status"] == "done" and not r.get("hardware"))
    rest = f"; {unrecorded} finished run(s) recorded none" if unrecorded else ""
    if len(groups) == 1:
        (name, runs), = groups.items()
        return [f"Hardware: {name}, for all {len(runs)} run(s) that recorded theirs{rest}.", ""]
    parts = "; ".join(f"{name}: {', '.join(runs)}" for name, runs in groups.items())
    return [f"**The runs trained on different hardware**, so a budget bought them different amounts of compute and "
            f"their wall-clock comparison is not fair: {parts}{rest}. Rerun the minority on the majority's hardware "
            f"(delete their run directories, then run the study again there).", ""]


def _collapse_lines(results: dict[str, Any]) -> list[str]:
    """A warning for runs that never left the unigram plateau outside a recipe sweep (where a sweep's runs may, by
    design): such a run learned nothing, and a comparison with it says nothing about its model."""
    swept = {run for c in results.get("recipe_choices") or [] for run in c["runs"]}
    stuck = [r["run"] for r in results["runs"] if r.get("on_unigram_plateau") and r["run"] not in swept]
    if not stuck:
        return []
    return [f"**{len(stuck)} run(s) never left the unigram plateau**: {', '.join(stuck)}. They learned nothing, so no "
            f"comparison with them holds; their recipe has too little margin at this size (a larger warm-up or a "
            f"smaller lr; a recipe sweep's Recipe choice keeps a step from such a collapse).", ""]


def _head_to_head_lines(pairs: Sequence[dict]) -> list[str]:
    lines = []
    for name in dict.fromkeys(p["baseline_variant"] for p in pairs):
        lines += ["", f"## MosaicBERT against {name} at each budget", "",
                  f"Differences are MosaicBERT minus {name} (val loss: negative is MosaicBERT ahead; accuracy and "
                  "downstream: positive is).", "",
                  f"| budget | val loss, MosaicBERT / {name} | val loss change | val acc change (pts) | "
                  f"downstream change (pts) | wall clock (s), MosaicBERT / {name} | lower val loss |",
                  "|---|---|---|---|---|---|---|"]
        for p in (p for p in pairs if p["baseline_variant"] == name):
            winner = p["lower_eval_loss"] or (f"none: {', '.join(p['on_unigram_plateau'])} on the plateau"
                                              if p["on_unigram_plateau"] else "-")
            lines.append(f"| {budget_label(p['budget_minutes'])} | "
                         f"{' / '.join(_fmt(v) for v in p['eval_loss'])} | {_fmt(p['eval_loss_change'], '.4f', True)} | "
                         f"{_fmt(p['eval_accuracy_change_pts'], '.2f', True)} | "
                         f"{_fmt(p['downstream_change_pts'], '.2f', True)} | "
                         f"{' / '.join(_fmt(v, '.1f') for v in p['wall_clock_s'])} | {winner} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    ev = results["evaluation"]
    unigram = ev.get("unigram") or {}
    lines = [f"# Study {results['study']}", ""]
    if results["description"]:
        lines += [results["description"], ""]
    lines += [f"Evaluation: {ev['samples']} validation samples, {ev['masked_tokens']} masked tokens at "
              f"{100 * ev['settings']['mask_prob']:g}% (the same for every run; digest "
              f"`{(ev['masked_positions_sha256'] or '')[:12]}`). Unigram reference (training-split token "
              f"frequencies, no context): loss {_fmt(unigram.get('loss'))}, accuracy "
              f"{_fmt(100 * unigram['accuracy'] if 'accuracy' in unigram else None, '.1f')}%; a run whose loss is "
              f"above {PLATEAU_FRACTION:g} x that is marked *plateau*.", ""]
    lines += _hardware_lines(results.get("hardware") or {}, results["runs"])
    lines += _collapse_lines(results)
    lines += ["## Runs", "",
              "| variant | budget | steps | epochs | wall clock (s) | real tokens/s | val loss | val acc (%) | "
              f"{results['downstream'] or 'downstream'} | status |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        note = r["status"] + (", plateau" if r.get("on_unigram_plateau") else "")
        lines.append(f"| {r['variant']} | {budget_label(r['budget_minutes'])} | {_fmt(r['steps'], 'd')} | "
                     f"{_fmt(r.get('epochs'), '.2f')} | "
                     f"{_fmt(r['wall_clock_s'], '.1f')} | {_fmt(r['tokens_per_s'], ',.0f')} | {_fmt(r['eval_loss'])} | "
                     f"{_fmt(None if r['eval_accuracy'] is None else 100 * r['eval_accuracy'], '.2f')} | "
                     f"{_fmt(r['downstream_score'], '.2f')} | {note} |")
    lines += _head_to_head_lines(results.get("head_to_head") or [])
    if results["ablation"]:
        lines += ["", f"## Ablation at {budget_label(results['ablation_budget_minutes'])}", "",
                  "Each MosaicBERT modification turned off in turn, against MosaicBERT at the same budget.", "",
                  "| switch off | instead | real tokens/s | throughput | val loss | val acc (pts) | downstream (pts) |",
                  "|---|---|---|---|---|---|---|"]
        for a in results["ablation"]:
            stuck = a.get("on_unigram_plateau") or a.get("reference_on_unigram_plateau")
            quality = (["*plateau*"] * 3 if stuck else
                       [_fmt(a['eval_loss_change'], '.4f', True), _fmt(a['eval_accuracy_change_pts'], '.2f', True),
                        _fmt(a['downstream_change_pts'], '.2f', True)])
            lines.append(f"| {a['switch']} | {a['description'].split(' instead')[0]} | "
                         f"{_fmt(a['tokens_per_s'], ',.0f')} | {_pct(a['throughput_change_pct'])} | "
                         f"{' | '.join(quality)} |")
        if any(a.get("reference_on_unigram_plateau") for a in results["ablation"]):
            lines += ["", "*plateau*: MosaicBERT's own run at this budget never left the unigram plateau, so no "
                          "quality change against it holds; results.json keeps the raw changes."]
        elif any(a.get("on_unigram_plateau") for a in results["ablation"]):
            lines += ["", "*plateau*: that variant never left the unigram plateau at MosaicBERT's recipe. Its quality "
                          "columns would measure that it did not learn at this lr, not what the switch buys in a "
                          "model that learns; results.json keeps the raw changes."]
    if results.get("recipe_choices"):
        lines += ["", "## Recipe choice", "",
                  "Per model, at the smallest budget: the lowest validation loss among the runs that left the unigram "
                  "plateau, leaving out a run whose next larger lr sat on the plateau (one step below a collapse, a "
                  "rerun of the same recipe can collapse too). Copy the chosen run's overrides into the study that "
                  "compares the models. A chosen value at the edge of the values tried (the smallest or the largest) "
                  "says the best recipe may lie beyond the sweep: extend it that way before trusting the choice.", "",
                  "| model | budget | runs finished | left the plateau | left out: next lr collapsed | chosen | "
                  "val loss | at the sweep's edge | overrides |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in results["recipe_choices"]:
            chosen = c["chosen"] or ("none: every finished run is on the plateau" if c["finished"] else "pending")
            if c["chosen"] and c["finished"] < len(c["runs"]):
                chosen += " (provisional: runs still to finish)"
            if c["chosen"] and not c["margin"]:
                chosen += " (no margin: every run that learned is one lr step below a collapse; add a smaller lr)"
            left_out = ", ".join(c["below_collapse"]) or "-"
            overrides = f"`{json.dumps(c['overrides'])}`" if c["overrides"] else "-"
            edges = ", ".join(f"{e['setting']} {e['value']:g} ({e['side']} tried)" for e in c.get("at_edge", []))
            lines.append(f"| {c['model']} | {budget_label(c['budget_minutes'])} | {c['finished']} of {len(c['runs'])} "
                         f"| {c['left_plateau']} | {left_out} | {chosen} | {_fmt(c['eval_loss'])} | {edges or '-'} "
                         f"| {overrides} |")
    if results["pareto_frontier"]:
        lines += ["", "## Pareto frontier", ""]
        for key, runs in results["pareto_frontier"].items():
            lines.append(f"- {'validation loss' if key == 'eval_loss' else 'downstream score'}: {', '.join(runs)}")
    for name in results.get("figures", []):
        lines += ["", f"![{name}]({name})"]
    return "\n".join(lines) + "\n"
